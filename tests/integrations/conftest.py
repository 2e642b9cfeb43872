"""Fixtures for posthog-python's AI wrappers over the real SDKs, against the fake LLM server:
in-process (``capture_events``), and end to end in the local Lambda environment with the
built layer (the e2e suite's ``deployment``, its function directory given the SDKs)."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from posthog_lambda.local.emulator.sandbox import link_distributions
from tests.e2e.conftest import Deployment, deployment, layer_dir, posthog  # noqa: F401  (fixtures)
from tests.integrations.fake_llm import FakeLLM

FIRST_TOKEN_DELAY_S = 0.05
CHUNK_DELAY_S = 0.005
SDKS = ("posthog", "openai", "anthropic", "langchain-core", "langchain-openai")
"""What a function using the wrappers bundles; posthog_lambda itself comes from the layer."""


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    """The fake provider, holding back the first streamed token so that it is measurable."""
    with FakeLLM(first_token_delay_s=FIRST_TOKEN_DELAY_S, chunk_delay_s=CHUNK_DELAY_S) as server:
        yield server


def with_dependencies(names: Sequence[str]) -> list[str]:
    """``names`` and every distribution they need on this interpreter (extras left out)."""
    seen: set[str] = set()
    todo = [canonicalize_name(name) for name in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for spec in importlib.metadata.distribution(name).requires or ():
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return sorted(seen)


def bundle_sdks(function_dir: Path) -> None:
    """Give a function directory the wrappers and SDKs as ``pip install --target`` would (as
    links to this interpreter's copies: nothing is downloaded), metadata included: some
    packages read their own version from it."""
    names = with_dependencies(SDKS)
    link_distributions(function_dir, names)
    for name in names:
        dist = importlib.metadata.distribution(name)
        for top in {str(f).split("/")[0] for f in dist.files or ()}:
            if top.endswith(".dist-info") and not (function_dir / top).exists():
                (function_dir / top).symlink_to(Path(str(dist.locate_file(top))))


@pytest.fixture
def ai_deployment(deployment: Deployment, llm: FakeLLM) -> Deployment:  # noqa: F811  (the imported fixture)
    """A deployment whose function can import posthog, openai, anthropic and LangChain, with
    the SDKs pointed at the fake provider through their own environment variables."""
    bundle_sdks(deployment.function)
    return deployment


def sdk_environment(llm: FakeLLM) -> dict[str, str]:
    """What points the SDKs at the fake provider: their own documented variables."""
    return {
        "OPENAI_BASE_URL": llm.openai_url,
        "OPENAI_API_KEY": "sk-fake-openai",
        "ANTHROPIC_BASE_URL": llm.anthropic_url,
        "ANTHROPIC_API_KEY": "sk-ant-fake",
    }
