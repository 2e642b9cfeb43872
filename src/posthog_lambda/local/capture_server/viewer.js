// The trace viewer's page: draws the model viewer.py put in #trace-data and, when the capture
// server served the page, waits on it for newer models. Every value in the model is user data
// (names, messages, errors, ids): the DOM is built with createElement and textContent only,
// never from markup, so a message holding "<script>" is shown as those characters.
"use strict";
(() => {
  const boot = JSON.parse(document.getElementById("trace-data").textContent);
  const live = boot.live;
  let model = boot.model;
  // What is selected: a trace (by id) and one of its nodes or events (by uid), or one of the
  // nodes without a trace id (untraced). Kept in the address's #fragment across reloads.
  let selection = { trace: null, uid: null, untraced: false };
  let drawn = { trace: null, revision: null };
  let lookup = new Map();

  // -- building the DOM ------------------------------------------------------------------------

  function el(tag, options, ...children) {
    const node = document.createElement(tag);
    const o = options || {};
    if (o.cls) node.className = o.cls;
    if (o.text !== undefined && o.text !== null) node.textContent = String(o.text);
    if (o.title !== undefined && o.title !== null) node.title = String(o.title);
    // Attribute names are always literals of this file, never data (no on*, style or href).
    for (const [name, value] of Object.entries(o.attrs || {})) node.setAttribute(name, String(value));
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function badge(cls, text, title) {
    return el("span", { cls: "badge " + cls, text, title });
  }

  const KINDS = { trace: "T", span: "S", generation: "G", embedding: "E", event: "•" };

  function kindMark(kind) {
    const known = Object.prototype.hasOwnProperty.call(KINDS, kind) ? kind : "span";
    return el("span", { cls: "kind " + known, text: KINDS[known], title: kind });
  }

  // -- formatting ------------------------------------------------------------------------------

  function ms(value) {
    if (value === null || value === undefined) return "–";
    if (value >= 10000) return (value / 1000).toFixed(1) + " s";
    if (value >= 1000) return (value / 1000).toFixed(2) + " s";
    if (value >= 10) return Math.round(value) + " ms";
    if (value >= 0.1) return value.toFixed(1) + " ms";
    return value > 0 ? "<0.1 ms" : "0 ms";
  }

  function cost(usd) {
    if (usd === null || usd === undefined) return "–";
    if (usd === 0) return "$0";
    // Two significant digits however small: LLM and Lambda costs are fractions of a cent.
    const digits = Math.min(12, Math.max(2, 1 - Math.floor(Math.log10(Math.abs(usd)))));
    return "$" + usd.toFixed(digits);
  }

  function count(n) {
    return Number(n).toLocaleString("en-US");
  }

  function plural(n, word) {
    return `${count(n)} ${word}${n === 1 ? "" : "s"}`;
  }

  function tokens(item) {
    const parts = [];
    if (item.input_tokens !== null && item.input_tokens !== undefined) parts.push(count(item.input_tokens) + " in");
    if (item.output_tokens !== null && item.output_tokens !== undefined) parts.push(count(item.output_tokens) + " out");
    return parts.length ? parts.join(" / ") : "–";
  }

  // A value summed from the children (the node has none of its own) says so.
  function summed(text, item, ...names) {
    const isSum = text !== "–" && names.some((name) => (item.summed || []).includes(name));
    return isSum ? el("span", { title: "the sum of its children's" }, text, el("span", { cls: "muted", text: " (sum)" })) : text;
  }

  function when(iso) {
    if (!iso) return "–";
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return String(iso);
    return date.toLocaleString(undefined, {
      month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  function nameOf(node) {
    if (node.kind === "trace" && !node.event) return "(no $ai_trace event)";
    return node.name === null || node.name === undefined || node.name === "" ? "(unnamed)" : node.name;
  }

  function firstLine(text, limit) {
    const line = String(text).split("\n")[0];
    return line.length > limit ? line.slice(0, limit - 1) + "…" : line;
  }

  // -- the trace list --------------------------------------------------------------------------

  function drawStatus(state, problem) {
    const status = document.getElementById("status");
    const what = `${plural(model.traces.length, "trace")}, ${plural(model.event_count, "event")}`;
    if (!live) {
      status.className = "status";
      status.textContent = `Snapshot: ${what}, written ${when(model.generated_at)}`;
    } else if (state === "offline") {
      status.className = "status offline";
      status.textContent = `Disconnected from the capture server, retrying (${problem}). Showing ${what}`;
    } else {
      status.className = "status live";
      status.textContent = `Live: ${what}. New traces appear as they arrive.`;
    }
  }

  function drawList() {
    const box = document.getElementById("traces");
    if (!model.traces.length) {
      box.replaceChildren(el("p", {
        cls: "empty",
        text: live ? "No traces yet: send events to this capture server and they appear here." : "No traces.",
      }));
      return;
    }
    const headings = ["Trace", "Started", "Duration", "Tokens", "Cost", "Error", "Distinct id", "Session", "Cold start"];
    const numeric = new Set(["Duration", "Tokens", "Cost"]);
    const head = el("thead", null, el("tr", null, headings.map((text) => el("th", { text, cls: numeric.has(text) ? "num" : "" }))));
    const body = el("tbody");
    for (const trace of model.traces) {
      const selected = !selection.untraced && selection.trace === trace.id;
      const row = el("tr", {
        cls: trace.failed ? "failed" : "",
        attrs: { "data-trace-id": trace.id, tabindex: 0, "aria-selected": selected, "data-failed": trace.failed },
      });
      const name = el("td", { cls: "wrap" },
        trace.failed ? badge("failed", trace.status ? `FAILED: ${trace.status}` : "FAILED", trace.error) : null,
        trace.failed ? " " : null,
        el("span", { text: trace.has_trace_event ? (trace.name || "(unnamed)") : "(no $ai_trace event)" }),
        trace.cut_short_count ? [" ", badge("cut-short", `${trace.cut_short_count} cut short`)] : null,
        problems(trace) ? [" ", badge("warn", `${problems(trace)} not in tree`, "PostHog would not place these in the tree")] : null,
      );
      row.append(
        name,
        el("td", { text: when(trace.started_at), title: trace.started_at }),
        el("td", { cls: "num" }, summed(ms(trace.duration_ms), trace, "latency")),
        el("td", { cls: "num" }, summed(tokens(trace), trace, "input_tokens", "output_tokens")),
        el("td", { cls: "num" }, summed(cost(trace.cost_usd), trace, "cost")),
        el("td", { cls: "wrap error-text", text: trace.error ? firstLine(trace.error, 120) : "", title: trace.error }),
        el("td", { cls: "mono", text: trace.distinct_id ?? "–" }),
        el("td", { cls: "mono", text: trace.session_id ?? "–" }),
        el("td", null, trace.cold_start === true ? badge("cold", "cold start") : trace.cold_start === false ? "warm" : "–"),
      );
      row.addEventListener("click", () => select({ trace: trace.id, uid: null, untraced: false }));
      row.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          select({ trace: trace.id, uid: null, untraced: false });
        }
      });
      body.append(row);
    }
    box.replaceChildren(el("table", { cls: "list" }, head, body));
  }

  function problems(trace) {
    return trace.orphans.length + trace.looping.length;
  }

  function drawUntraced() {
    const box = document.getElementById("untraced");
    if (!model.untraced.length) {
      box.replaceChildren();
      return;
    }
    const list = el("ul", { cls: "untraced-list" });
    for (const node of model.untraced) {
      const selected = selection.untraced && selection.uid === node.uid;
      const button = el("button", {
        cls: "linkish", attrs: { type: "button", "data-uid": node.uid, "aria-selected": selected },
      }, kindMark(node.kind), nameOf(node), node.model ? el("span", { cls: "muted", text: ` ${node.model}` }) : null,
      el("span", { cls: "muted", text: ` · ${ms(node.latency_ms)} · ${tokens(node)}` }));
      button.addEventListener("click", () => select({ trace: null, uid: node.uid, untraced: true }));
      list.append(el("li", null, button));
    }
    box.replaceChildren(el("div", { cls: "untraced-section", attrs: { "data-testid": "untraced" } },
      el("h3", { text: `Not in any trace: ${model.untraced.length} $ai_* events without $ai_trace_id` }),
      el("p", { cls: "muted small", text: "PostHog groups LLM events by $ai_trace_id: its trace view cannot show these." }),
      list));
  }

  function drawIgnored() {
    const names = Object.entries(model.ignored || {});
    const text = names.map(([name, n]) => `${count(n)} ${name}`).join(", ");
    document.getElementById("ignored").textContent = names.length
      ? `Also received, in no trace and not LLM analytics nodes: ${text}.` : "";
  }

  // -- one trace: its tree and timeline ----------------------------------------------------------

  function flatten(node, depth, rows, note) {
    rows.push({ node, depth, note });
    for (const child of node.children || []) flatten(child, depth + 1, rows, null);
    return rows;
  }

  function drawTrace() {
    const pane = document.getElementById("trace");
    lookup = new Map();
    if (selection.untraced) {
      const node = model.untraced.find((n) => n.uid === selection.uid);
      drawn = { trace: null, revision: null };
      if (!node) {
        pane.replaceChildren(el("p", { cls: "empty", text: "This event is no longer in the capture server." }));
        return;
      }
      lookup.set(node.uid, { node });
      pane.replaceChildren(el("h2", { text: "An $ai_* event without $ai_trace_id (in no trace)" }),
        el("div", { cls: "detail", attrs: { id: "detail" } }));
      drawDetail();
      return;
    }
    const trace = model.traces.find((t) => t.id === selection.trace);
    drawn = { trace: trace ? trace.id : null, revision: trace ? trace.revision : null };
    if (!trace) {
      pane.replaceChildren(el("p", { cls: "empty", text: "Select a trace to see its tree, timeline, messages and figures." }));
      return;
    }
    const rows = flatten(trace.tree, 0, [], null);
    const apart = [];
    for (const orphan of trace.orphans) flatten(orphan, 0, apart, `parent ${orphan.parent_id} not found`);
    for (const node of trace.looping) apart.push({ node, depth: 0, note: `parent ${node.parent_id}: the parents form a loop` });
    for (const row of [...rows, ...apart]) lookup.set(row.node.uid, row);
    for (const event of trace.events) lookup.set(event.uid, { event });
    if (!lookup.has(selection.uid)) selection.uid = trace.tree.uid;

    const head = el("div", { cls: "trace-head" },
      el("h2", null, kindMark("trace"), trace.has_trace_event ? (trace.name || "(unnamed)") : "(no $ai_trace event)"),
      trace.failed ? badge("failed", trace.status ? `FAILED: Lambda status ${trace.status}` : "FAILED") : null,
      el("span", { cls: "mono muted", text: trace.id }),
      el("span", { cls: "facts" },
        el("span", null, "started ", when(trace.started_at)),
        el("span", null, "duration ", summed(ms(trace.duration_ms), trace, "latency")),
        el("span", null, "tokens ", summed(tokens(trace), trace, "input_tokens", "output_tokens")),
        el("span", null, "cost ", summed(cost(trace.cost_usd), trace, "cost")),
        trace.distinct_id ? el("span", null, "user ", el("span", { cls: "mono", text: trace.distinct_id })) : null,
        trace.session_id ? el("span", null, "session ", el("span", { cls: "mono", text: trace.session_id })) : null,
        trace.cold_start === true ? badge("cold", "cold start") : null));
    const parts = [head];
    if (trace.failed) {
      const cut = trace.cut_short_count ? ` ${trace.cut_short_count} span(s) were still running and were cut short.` : "";
      parts.push(el("p", { cls: "banner", attrs: { role: "alert", "data-testid": "failed-banner" } },
        `This trace failed: ${trace.error || "error"}.${cut}`));
    }
    const left = el("div", null, el("h3", { text: "Tree and timeline" }), waterfall(trace, rows));
    if (apart.length) {
      left.append(
        el("h3", { cls: "error-text", text: `Not placed in the tree by PostHog (${apart.length})` }),
        el("p", { cls: "muted small", text: "Their $ai_parent_id is neither the trace nor a span of it, so PostHog's trace view does not show them." }),
        el("div", { attrs: { "data-testid": "not-in-tree" } }, waterfall(trace, apart)));
    }
    if (trace.events.length) {
      const list = el("ul", { cls: "events-list" });
      for (const event of trace.events) {
        const button = el("button", { cls: "linkish", attrs: { type: "button", "data-uid": event.uid } },
          kindMark("event"), event.summary);
        button.addEventListener("click", () => select({ ...selection, uid: event.uid }));
        list.append(el("li", null, button));
      }
      left.append(el("h3", { text: "Events of this trace" }), list);
    }
    parts.push(el("div", { cls: "columns" }, left, el("div", { cls: "detail", attrs: { id: "detail" } })));
    pane.replaceChildren(...parts);
    drawDetail();
  }

  function waterfall(trace, rows) {
    const box = el("div", { cls: "waterfall", attrs: { role: "tree" } });
    const span = trace.window;
    const length = span ? Math.max(span.end_ms - span.start_ms, 0.001) : null;
    const at = (moment) => ((moment - span.start_ms) / length) * 100;
    const axis = el("span", { cls: "wf-track" });
    if (span) {
      for (const fraction of [0, 0.25, 0.5, 0.75, 1]) {
        const tick = el("span", { cls: "wf-tick", text: ms(length * fraction) });
        tick.style.left = `${fraction * 100}%`;
        axis.append(tick);
      }
    }
    box.append(el("div", { cls: "wf-row axis", attrs: { "aria-hidden": "true" } }, el("span", { cls: "wf-label", text: "" }), axis));
    for (const { node, depth, note } of rows) {
      const error = node.is_error || node.cut_short;
      const row = el("button", {
        cls: "wf-row" + (error ? " error" : ""),
        attrs: {
          type: "button", role: "treeitem", "data-uid": node.uid, "data-kind": node.kind,
          "data-cut-short": node.cut_short, "data-error": node.is_error, "aria-selected": node.uid === selection.uid,
        },
      });
      const label = el("span", { cls: "wf-label" });
      label.style.paddingLeft = `${8 + depth * 16}px`;
      label.append(kindMark(node.kind), el("span", { cls: "wf-name", text: nameOf(node) }));
      if (node.cut_short) label.append(" ", badge("cut-short", "cut short", node.error));
      else if (node.is_error) label.append(" ", badge("error", "error", node.error));
      if (node.continues_trace) label.append(" ", badge("cold", "invocation", "an invocation continuing this trace"));
      if (note) label.append(el("span", { cls: "wf-note", text: note }));
      const track = el("span", { cls: "wf-track" });
      let start = node.start_ms;
      let end = node.end_ms;
      if ((start === null || end === null) && node.kind === "trace" && !node.event && span) {
        start = span.start_ms; // a trace without its $ai_trace event spans what it holds
        end = span.end_ms;
      }
      if (span && start !== null && end !== null) {
        const left = at(start);
        const right = at(end);
        const bar = el("span", {
          cls: `wf-bar ${KINDS[node.kind] ? node.kind : "span"}${node.cut_short ? " cut-short" : node.is_error ? " error" : ""}`,
          title: `${nameOf(node)}: ${ms(end - start)}, from +${ms(start - span.start_ms)}`,
        });
        bar.style.left = `${left}%`;
        bar.style.width = `${Math.max(right - left, 0)}%`;
        // The duration goes after the bar, else inside it when it is wide, else before it.
        const time = el("span", { cls: "wf-time", text: ms(end - start) });
        if (right < 80) {
          time.style.left = `calc(${right}% + 6px)`;
        } else if (right - left > 15) {
          time.classList.add("inside");
          time.style.right = `calc(${100 - right}% + 6px)`;
        } else {
          time.style.right = `calc(${100 - left}% + 6px)`;
        }
        track.append(bar, time);
      } else {
        const time = el("span", { cls: "wf-time", text: "no time" });
        time.style.left = "0";
        track.append(time);
      }
      row.append(label, track);
      row.addEventListener("click", () => select({ ...selection, uid: node.uid }));
      box.append(row);
    }
    return box;
  }

  // -- the selected node -----------------------------------------------------------------------

  function drawDetail() {
    const box = document.getElementById("detail");
    if (!box) return;
    for (const item of document.querySelectorAll("#trace [data-uid]")) {
      item.setAttribute("aria-selected", String(item.getAttribute("data-uid") === selection.uid));
    }
    const entry = lookup.get(selection.uid);
    if (!entry) {
      box.replaceChildren();
      return;
    }
    box.replaceChildren(...(entry.event ? eventDetail(entry.event) : nodeDetail(entry.node)));
  }

  function facts(pairs) {
    const list = el("dl");
    for (const [term, value] of pairs) {
      if (value === null || value === undefined || value === "" || value === "–") continue;
      list.append(el("dt", { text: term }), el("dd", null, value));
    }
    return list;
  }

  function nodeDetail(node) {
    const parts = [el("h2", { attrs: { "data-testid": "detail-title" } }, kindMark(node.kind), nameOf(node),
      node.cut_short ? [" ", badge("cut-short", "cut short")] : null,
      node.is_error && !node.cut_short ? [" ", badge("error", "error")] : null)];
    if (node.is_error) parts.push(el("p", { cls: "banner", attrs: { "data-testid": "node-error" }, text: node.error }));
    const model = node.model ? (node.provider ? `${node.model} (${node.provider})` : node.model) : null;
    const tokenText = tokens(node);
    parts.push(facts([
      ["Model", model],
      ["Latency", summed(ms(node.latency_ms), node, "latency")],
      ["Tokens", tokenText === "–" ? null : el("span", { attrs: { "data-testid": "tokens" } }, summed(tokenText, node, "input_tokens", "output_tokens"))],
      ["Cost", node.cost_usd === null ? null : summed(cost(node.cost_usd), node, "cost")],
      ["Time to first token", node.ttft_ms === null ? null : ms(node.ttft_ms)],
      ["Lambda status", node.lambda_status],
      ["Ended", node.timestamp ? el("span", { title: node.timestamp, text: when(node.timestamp) }) : null],
      ["Distinct id", node.distinct_id ? el("span", { cls: "mono", text: node.distinct_id }) : null],
      [node.kind === "trace" ? "Trace id" : "Span id", node.id ? el("span", { cls: "mono", text: node.id }) : null],
      ["Parent", node.kind !== "trace" && node.parent_id ? el("span", { cls: "mono", text: node.parent_id }) : null],
      ["Event", node.event],
    ]));
    parts.push(el("h3", { text: "Input" }), payload(node.input, "input"));
    const noOutput = node.cut_short ? "None: still running when the invocation ended (cut short)." : null;
    parts.push(el("h3", { text: "Output" }), payload(node.output, "output", noOutput));
    const root = node.invocation_root ? node : (lookup.get(node.invocation) || {}).node;
    if (root && root.lambda && Object.keys(root.lambda).length) {
      const title = root === node ? "Lambda" : `Lambda (the invocation: ${nameOf(root)})`;
      parts.push(el("h3", { text: title }), el("div", { attrs: { "data-testid": "lambda" } },
        facts(Object.entries(root.lambda).map(([key, value]) => [key, figure(key, value)]))));
    }
    if (node.properties) {
      parts.push(el("details", null, el("summary", { text: "Other properties" }), el("pre", { cls: "json", text: node.properties })));
    }
    return parts;
  }

  function figure(key, value) {
    if (typeof value === "number" && key.endsWith("_usd")) return el("span", { title: String(value), text: cost(value) });
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function eventDetail(event) {
    return [
      el("h2", null, kindMark("event"), event.event === null || event.event === undefined ? "(no event name)" : String(event.event)),
      el("p", { text: event.summary }),
      facts([["Time", event.timestamp ? when(event.timestamp) : null], ["Distinct id", event.distinct_id]]),
      event.properties ? el("pre", { cls: "json", text: event.properties }) : null,
    ].filter(Boolean);
  }

  const ROLES = new Set(["system", "developer", "user", "assistant", "tool", "function"]);

  function payload(value, what, absent) {
    if (!value) return el("p", { cls: "muted small", text: absent || "None." });
    if (value.messages) {
      return el("div", { cls: "messages", attrs: { "data-testid": what } }, value.messages.map((message) => el("div", {
        cls: `message ${ROLES.has(message.role) ? message.role : "other"}`,
        attrs: { "data-role": message.role },
      }, el("div", { cls: "role", text: message.role }),
      message.text !== null ? el("div", { cls: "content", text: message.text }) : null,
      message.json ? el("pre", { cls: "json", text: message.json }) : null)));
    }
    return el("pre", { cls: "json", attrs: { "data-testid": what }, text: value.text !== undefined ? value.text : value.json });
  }

  // -- selection, the address and live updates ---------------------------------------------------

  function select(next) {
    // An event without a trace id is drawn on its own, so choosing another redraws too.
    const redraw = next.untraced || next.trace !== selection.trace || next.untraced !== selection.untraced;
    selection = next;
    remember();
    if (redraw) {
      drawList();
      drawUntraced();
      drawTrace();
    } else {
      drawDetail();
    }
  }

  function remember() {
    const fields = [];
    if (selection.untraced) fields.push("untraced");
    else if (selection.trace !== null) fields.push("trace=" + encodeURIComponent(selection.trace));
    if (selection.uid) fields.push("node=" + encodeURIComponent(selection.uid));
    try {
      history.replaceState(null, "", "#" + fields.join("&"));
    } catch (error) {
      // Some file:// pages may not rewrite their address; the selection still works.
    }
  }

  function recall() {
    const found = { trace: null, uid: null, untraced: false };
    for (const field of location.hash.replace(/^#/, "").split("&")) {
      const [key, value] = field.split("=");
      try {
        if (key === "untraced") found.untraced = true;
        if (key === "trace" && value !== undefined) found.trace = decodeURIComponent(value);
        if (key === "node" && value !== undefined) found.uid = decodeURIComponent(value);
      } catch (error) {
        // A mangled address: start with nothing selected.
      }
    }
    return found;
  }

  function chooseDefault() {
    const known = selection.untraced
      ? model.untraced.some((n) => n.uid === selection.uid)
      : model.traces.some((t) => t.id === selection.trace);
    if (!known && model.traces.length) selection = { trace: model.traces[0].id, uid: null, untraced: false };
  }

  function update(next) {
    model = next;
    chooseDefault();
    drawStatus("live");
    drawList();
    drawUntraced();
    drawIgnored();
    const trace = model.traces.find((t) => t.id === selection.trace);
    // Redraw the open trace only when its own events changed, so reading it is not disturbed.
    if (selection.untraced || drawn.trace !== selection.trace || (trace && trace.revision !== drawn.revision) || !trace) {
      drawTrace();
    }
  }

  async function poll() {
    for (;;) {
      try {
        const address = `${live.endpoint}?after=${encodeURIComponent(model.version)}&wait=${live.wait_s}`;
        const response = await fetch(address, { cache: "no-store" });
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        const next = await response.json();
        if (next.version !== model.version) update(next);
        else drawStatus("live");
      } catch (error) {
        drawStatus("offline", String(error && error.message ? error.message : error));
        await new Promise((resolve) => setTimeout(resolve, 2000));
      }
    }
  }

  selection = recall();
  chooseDefault();
  drawStatus("live");
  drawList();
  drawUntraced();
  drawIgnored();
  drawTrace();
  remember();
  document.body.setAttribute("data-ready", "true");
  if (live) poll();
})();
