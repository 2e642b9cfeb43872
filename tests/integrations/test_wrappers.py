"""posthog-python's AI wrappers around the real OpenAI and Anthropic SDKs, talking to the fake
provider, with ``posthog_client()`` as their PostHog client: what reaches PostHog."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from posthog.ai.anthropic import Anthropic, AsyncAnthropic
from posthog.ai.openai import AsyncOpenAI, OpenAI

from posthog_lambda import current_span, posthog_client, posthog_traced, span
from posthog_lambda.testing import capture_events, trace_tree_problems
from tests.helpers import by_kind, one
from tests.integrations.conftest import FIRST_TOKEN_DELAY_S
from tests.integrations.fake_llm import DEFAULT_REPLY, FakeLLM, count_tokens

QUESTION = "What is the capital of France?"
MESSAGES = [{"role": "user", "content": QUESTION}]
REPLY_TOKENS = count_tokens(DEFAULT_REPLY)


@pytest.fixture
def oai(llm: FakeLLM) -> Iterator[OpenAI]:
    client = OpenAI(posthog_client=posthog_client(), base_url=llm.openai_url, api_key="sk-test", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def claude(llm: FakeLLM) -> Iterator[Anthropic]:
    client = Anthropic(posthog_client=posthog_client(), base_url=llm.anthropic_url, api_key="sk-ant", max_retries=0)
    yield client
    client.close()


def generation_of(events: list[Any]) -> dict[str, Any]:
    props: dict[str, Any] = one(events, "$ai_generation")["properties"]
    return props


def handler_trace(events: list[Any]) -> dict[str, Any]:
    return dict(one(events, "$ai_trace"))


def assert_streamed(props: dict[str, Any]) -> None:
    """Time to first token: after the fake's hold-back, before the rest of the stream."""
    ttft = props["$ai_time_to_first_token"]
    assert props["$ai_stream"] is True
    assert FIRST_TOKEN_DELAY_S <= ttft < props["$ai_latency"]


# -- OpenAI ---------------------------------------------------------------------------------


def test_openai_chat_joins_the_handler_trace_with_its_user_and_session(oai: OpenAI, events: list[Any]) -> None:
    @posthog_traced(distinct_id=lambda event, context: event["user"], session_id="conversation-7")
    def handler(event: dict[str, Any], context: Any) -> str:
        reply = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return str(reply.choices[0].message.content)

    assert handler({"user": "user-1"}, None) == DEFAULT_REPLY
    trace = handler_trace(events)
    generation = one(events, "$ai_generation")
    props = generation["properties"]
    assert props["$ai_model"] == "gpt-4o-mini"
    assert props["$ai_provider"] == "openai"
    assert props["$ai_input_tokens"] == count_tokens(QUESTION)
    assert props["$ai_output_tokens"] == REPLY_TOKENS
    assert props["$ai_latency"] > 0
    assert props["$ai_input"] == MESSAGES
    assert props["$ai_output_choices"][0]["content"][0]["text"] == DEFAULT_REPLY
    # The wrapper made up a trace id and used it as the distinct id: both are the handler's now.
    assert props["$ai_trace_id"] == trace["properties"]["$ai_trace_id"]
    assert props["$ai_parent_id"] == trace["properties"]["$ai_trace_id"]
    assert generation["distinct_id"] == "user-1"
    assert "$process_person_profile" not in props
    assert props["$ai_session_id"] == "conversation-7"
    assert "$ai_time_to_first_token" not in props
    assert trace_tree_problems(events) == []


def test_openai_stream_nests_under_the_span_with_time_to_first_token(
    oai: OpenAI, llm: FakeLLM, events: list[Any]
) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        with span("answer") as s:
            stream = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            return f"{s.span_id}|{text}"

    span_id, text = handler({}, None).split("|")
    assert text == DEFAULT_REPLY
    props = generation_of(events)
    assert props["$ai_parent_id"] == span_id
    assert props["$ai_trace_id"] == handler_trace(events)["properties"]["$ai_trace_id"]
    assert props["$ai_input_tokens"] == count_tokens(QUESTION)
    assert props["$ai_output_tokens"] == REPLY_TOKENS
    assert_streamed(props)
    # The wrapper asked for the usage chunk, as the real API needs for a stream's tokens.
    assert llm.requests[-1][2]["stream_options"] == {"include_usage": True}
    assert trace_tree_problems(events) == []


def test_openai_stream_closed_early_still_records_first_token(oai: OpenAI, events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        with oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True) as stream:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    return str(chunk.choices[0].delta.content)
        return ""

    assert handler({}, None) == DEFAULT_REPLY.split(" ")[0] + " "
    props = generation_of(events)
    assert props["$ai_output_choices"][0]["content"][0]["text"] == DEFAULT_REPLY.split(" ")[0] + " "
    assert_streamed(props)


def test_openai_responses_api_plain_and_streamed(oai: OpenAI, events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> str:
        plain = oai.responses.create(model="gpt-4o-mini", input=QUESTION, instructions="Answer briefly.")
        with span("streamed"):
            stream = oai.responses.create(model="gpt-4o-mini", input=QUESTION, stream=True)
            streamed = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        return f"{plain.output_text}|{streamed}"

    assert handler({}, None) == f"{DEFAULT_REPLY}|{DEFAULT_REPLY}"
    plain, streamed = by_kind(events, "$ai_generation")
    assert plain["properties"]["$ai_input_tokens"] == count_tokens(QUESTION) + count_tokens("Answer briefly.")
    assert plain["properties"]["$ai_instructions"] == "Answer briefly."
    assert plain["properties"]["$ai_stop_reason"] == "completed"
    assert streamed["properties"]["$ai_output_tokens"] == REPLY_TOKENS
    assert streamed["properties"]["$ai_parent_id"] == one(events, "$ai_span", "streamed")["properties"]["$ai_span_id"]
    assert_streamed(streamed["properties"])
    assert "$ai_time_to_first_token" not in plain["properties"]
    assert trace_tree_problems(events) == []


def test_openai_embeddings_join_the_trace(oai: OpenAI, events: list[Any]) -> None:
    @posthog_traced(distinct_id="user-e")
    def handler(event: Any, context: Any) -> int:
        with span("index"):
            result = oai.embeddings.create(model="text-embedding-3-small", input=["first text", "the second text"])
        return len(result.data)

    assert handler({}, None) == 2
    embedding = one(events, "$ai_embedding")
    props = embedding["properties"]
    assert props["$ai_model"] == "text-embedding-3-small"
    assert props["$ai_input_tokens"] == 5
    assert props["$ai_input"] == ["first text", "the second text"]
    assert props["$ai_parent_id"] == one(events, "$ai_span", "index")["properties"]["$ai_span_id"]
    assert props["$ai_trace_id"] == handler_trace(events)["properties"]["$ai_trace_id"]
    assert embedding["distinct_id"] == "user-e"
    assert "$ai_time_to_first_token" not in props


def test_a_failed_call_raises_unchanged_and_is_recorded_as_an_error(oai: OpenAI, events: list[Any]) -> None:
    raised: list[BaseException] = []

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        try:
            oai.chat.completions.create(model="fail-400", messages=MESSAGES)
        except openai.BadRequestError as exc:
            raised.append(exc)
            raise

    with pytest.raises(openai.BadRequestError) as info:
        handler({}, None)
    assert info.value is raised[0]
    props = generation_of(events)
    assert props["$ai_is_error"] is True
    assert props["$ai_http_status"] == 400
    assert props["$ai_trace_id"] == handler_trace(events)["properties"]["$ai_trace_id"]


# -- Anthropic ------------------------------------------------------------------------------


def test_anthropic_messages_plain_and_both_ways_of_streaming(claude: Anthropic, events: list[Any]) -> None:
    @posthog_traced(distinct_id="user-2")
    def handler(event: Any, context: Any) -> list[str]:
        texts = []
        plain = claude.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)
        texts.append(plain.content[0].text)
        with span("streams"):
            stream = claude.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES, stream=True)
            texts.append("".join(e.delta.text for e in stream if e.type == "content_block_delta"))
            with claude.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES) as helper:
                texts.append(helper.get_final_text())
        return texts

    assert handler({}, None) == [DEFAULT_REPLY] * 3
    trace_id = handler_trace(events)["properties"]["$ai_trace_id"]
    span_id = one(events, "$ai_span", "streams")["properties"]["$ai_span_id"]
    plain, created, helped = (e["properties"] for e in by_kind(events, "$ai_generation"))
    for props in (plain, created, helped):
        assert props["$ai_provider"] == "anthropic"
        assert props["$ai_model"] == "claude-haiku-4-5"
        assert props["$ai_input_tokens"] == count_tokens(QUESTION)
        assert props["$ai_output_tokens"] == REPLY_TOKENS
        assert props["$ai_trace_id"] == trace_id
    assert plain["$ai_parent_id"] == trace_id
    assert created["$ai_parent_id"] == helped["$ai_parent_id"] == span_id
    assert_streamed(created)
    assert_streamed(helped)
    assert {e["distinct_id"] for e in events} == {"user-2"}
    assert trace_tree_problems(events) == []


def test_async_clients_stream_inside_an_async_handler(llm: FakeLLM, events: list[Any]) -> None:
    async_oai = AsyncOpenAI(posthog_client=posthog_client(), base_url=llm.openai_url, api_key="k", max_retries=0)
    async_claude = AsyncAnthropic(
        posthog_client=posthog_client(), base_url=llm.anthropic_url, api_key="k", max_retries=0
    )

    async def openai_part() -> str:
        with span("openai"):
            stream = await async_oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def anthropic_part() -> str:
        with span("anthropic"):
            stream = await async_claude.messages.create(
                model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES, stream=True
            )
            return "".join([e.delta.text async for e in stream if e.type == "content_block_delta"])

    @posthog_traced
    async def handler(event: Any, context: Any) -> list[str]:
        # Concurrently: each event must still land under its own task's span.
        return list(await asyncio.gather(openai_part(), anthropic_part()))

    async def run() -> list[str]:
        try:
            return await handler({}, None)
        finally:
            await async_oai.close()
            await async_claude.close()

    assert asyncio.run(run()) == [DEFAULT_REPLY, DEFAULT_REPLY]
    for provider, name in (("openai", "openai"), ("anthropic", "anthropic")):
        props = next(
            e["properties"] for e in by_kind(events, "$ai_generation") if e["properties"]["$ai_provider"] == provider
        )
        assert props["$ai_parent_id"] == one(events, "$ai_span", name)["properties"]["$ai_span_id"]
        assert_streamed(props)
    assert trace_tree_problems(events) == []


# -- the handler's settings apply -----------------------------------------------------------


def test_privacy_mode_of_the_handler_strips_wrapper_inputs_and_outputs(oai: OpenAI, events: list[Any]) -> None:
    seen: list[bool] = []

    @posthog_traced(privacy_mode=True)
    def handler(event: Any, context: Any) -> None:
        seen.append(posthog_client().privacy_mode)
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        stream = oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        list(stream)
        oai.responses.create(model="gpt-4o-mini", input=QUESTION, instructions="secret system prompt")

    handler({}, None)
    assert seen == [True]
    assert posthog_client().privacy_mode is False  # outside the trace: the configured default
    generations = by_kind(events, "$ai_generation")
    assert len(generations) == 3
    for event in generations:
        props = event["properties"]
        for private in ("$ai_input", "$ai_output_choices", "$ai_instructions"):
            assert private not in props
        assert props["$ai_input_tokens"] > 0
        assert props["$ai_output_tokens"] == REPLY_TOKENS
    assert "secret system prompt" not in str(events)
    assert QUESTION not in str(events)


def test_secret_keys_are_redacted_in_wrapper_events(oai: OpenAI, events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            posthog_properties={"api_key": "sk-live-123", "request": {"Authorization": "Bearer abc"}, "kept": "yes"},
        )

    handler({}, None)
    props = generation_of(events)
    assert props["api_key"] == "[REDACTED]"
    assert props["request"] == {"Authorization": "[REDACTED]"}
    assert props["kept"] == "yes"
    assert "sk-live-123" not in str(events)


def test_groups_and_properties_of_the_handler_are_shared_the_callers_win(oai: OpenAI, events: list[Any]) -> None:
    @posthog_traced(groups={"company": "acme", "team": "core"}, properties={"tier": "free", "app": "demo"})
    def handler(event: Any, context: Any) -> None:
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            posthog_groups={"team": "search"},
            posthog_properties={"tier": "pro"},
        )

    handler({}, None)
    props = generation_of(events)
    assert props["$groups"] == {"company": "acme", "team": "search"}
    assert props["tier"] == "pro"
    assert props["app"] == "demo"


def test_an_anonymous_handler_lends_its_trace_id_as_personless_distinct_id(oai: OpenAI, events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    handler({}, None)
    trace = handler_trace(events)
    generation = one(events, "$ai_generation")
    assert generation["distinct_id"] == trace["distinct_id"] == trace["properties"]["$ai_trace_id"]
    assert generation["properties"]["$process_person_profile"] is False


# -- what the caller chose is kept -------------------------------------------------------------


def test_an_explicit_trace_id_and_user_are_kept(oai: OpenAI, events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, posthog_trace_id="conversation-42", posthog_distinct_id="user-9"
        )

    handler({}, None)
    generation = one(events, "$ai_generation")
    props = generation["properties"]
    assert props["$ai_trace_id"] == "conversation-42"
    assert "$ai_parent_id" not in props
    assert generation["distinct_id"] == "user-9"
    assert "$process_person_profile" not in props  # a real user, though the handler has none


def test_a_random_uuid4_trace_id_counts_as_the_wrappers_default(oai: OpenAI, events: list[Any]) -> None:
    """The documented rule: the wrappers invent a UUIDv4 when given no trace id, and the one
    passed here cannot be told apart from it, so the event joins the handler's trace."""

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        oai.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, posthog_trace_id="6f1c2a8e-3b4d-4e5f-9a0b-1c2d3e4f5a6b"
        )

    handler({}, None)
    assert generation_of(events)["$ai_trace_id"] == handler_trace(events)["properties"]["$ai_trace_id"]


def test_the_handlers_own_trace_id_passed_explicitly_nests_the_same(oai: OpenAI, events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        with span("inner"):
            oai.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, posthog_trace_id=current_span().trace_id
            )

    handler({}, None)
    props = generation_of(events)
    assert props["$ai_trace_id"] == handler_trace(events)["properties"]["$ai_trace_id"]
    assert props["$ai_parent_id"] == one(events, "$ai_span", "inner")["properties"]["$ai_span_id"]


# -- outside a trace ------------------------------------------------------------------------


def test_outside_a_trace_the_event_is_sent_on_its_own(oai: OpenAI, claude: Anthropic) -> None:
    with capture_events() as events:
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        stream = claude.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES, stream=True)
        list(stream)
    assert [e["event"] for e in events] == ["$ai_generation", "$ai_generation"]
    for event in events:
        props = event["properties"]
        # As posthog-python would send it: its own trace, the trace id standing in as a personless user.
        assert event["distinct_id"] == props["$ai_trace_id"]
        assert props["$process_person_profile"] is False
        assert "$ai_parent_id" not in props
        assert props["$ai_output_tokens"] == REPLY_TOKENS
    assert events[0]["properties"]["$ai_trace_id"] != events[1]["properties"]["$ai_trace_id"]
    assert_streamed(events[1]["properties"])


def test_outside_a_trace_configured_defaults_apply(oai: OpenAI) -> None:
    from posthog_lambda import configure

    configure(default_distinct_id="service-user", privacy_mode=True)
    with capture_events() as events:
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, posthog_properties={"password": "pw"})
    props = generation_of(events)
    assert events[0]["distinct_id"] == "service-user"
    assert "$process_person_profile" not in props
    assert "$ai_input" not in props
    assert "$ai_output_choices" not in props
    assert props["password"] == "[REDACTED]"


def test_a_thread_without_the_context_sends_outside_the_trace(oai: OpenAI, events: list[Any]) -> None:
    import threading

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        worker = threading.Thread(target=lambda: oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES))
        worker.start()
        worker.join()

    handler({}, None)
    generation = generation_of(events)
    assert generation["$ai_trace_id"] != handler_trace(events)["properties"]["$ai_trace_id"]


def test_wrapper_events_leave_with_the_trace_not_before(oai: OpenAI) -> None:
    sent_during: list[int] = []

    with capture_events() as events:

        @posthog_traced
        def handler(event: Any, context: Any) -> None:
            oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            sent_during.append(len(events))

        handler({}, None)
    assert sent_during == [0]
    assert [e["event"] for e in events] == ["$ai_generation", "$ai_trace"]


def test_anthropic_error_passes_through(claude: Anthropic, events: list[Any]) -> None:
    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        claude.messages.create(model="fail-529", max_tokens=8, messages=MESSAGES)

    with pytest.raises(anthropic.APIStatusError) as info:
        handler({}, None)
    assert info.value.status_code == 529
    props = generation_of(events)
    assert props["$ai_is_error"] is True
    assert props["$ai_http_status"] == 529
