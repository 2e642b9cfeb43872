"""Browser tests of the trace viewer, in headless Chromium driven by Playwright."""
