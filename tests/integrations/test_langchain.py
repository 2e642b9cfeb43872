"""LangChain with posthog-python's ``CallbackHandler(client=posthog_client())``: the chain's runs
become spans and generations of the handler's trace, under the span that was running."""

from __future__ import annotations

from typing import Any

from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from posthog.ai.langchain import CallbackHandler

from posthog_lambda import posthog_client, posthog_traced, span
from posthog_lambda.testing import trace_tree_problems
from tests.helpers import by_kind, one
from tests.integrations.fake_llm import DEFAULT_REPLY, FakeLLM, count_tokens

PROMPT = "Tell me about {topic} in one line."


def chain_for(llm: FakeLLM) -> Any:
    model = ChatOpenAI(base_url=llm.openai_url, api_key="sk-test", model="gpt-4o-mini", max_retries=0)
    return ChatPromptTemplate.from_messages([("user", PROMPT)]) | model


def test_a_chain_nests_under_the_running_span(llm: FakeLLM, events: list[Any]) -> None:
    chain = chain_for(llm)

    @posthog_traced(distinct_id="user-3", session_id="s-3")
    def handler(event: dict[str, Any], context: Any) -> str:
        with span("chain"):
            reply = chain.invoke(event, config={"callbacks": [CallbackHandler(client=posthog_client())]})
        return str(reply.content)

    assert handler({"topic": "Paris"}, None) == DEFAULT_REPLY
    trace_id = one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    ours = one(events, "$ai_span", "chain")["properties"]
    sequence = one(events, "$ai_span", "RunnableSequence")["properties"]
    template = one(events, "$ai_span", "ChatPromptTemplate")["properties"]
    generation = one(events, "$ai_generation")["properties"]
    # LangChain's root run would be a second $ai_trace: it is a span under ours instead.
    assert len(by_kind(events, "$ai_trace")) == 1
    assert sequence["$ai_parent_id"] == ours["$ai_span_id"]
    assert template["$ai_parent_id"] == generation["$ai_parent_id"] == sequence["$ai_span_id"]
    for props in (sequence, template, generation):
        assert props["$ai_trace_id"] == trace_id
        assert props["$ai_session_id"] == "s-3"
        assert "$process_person_profile" not in props
    assert {e["distinct_id"] for e in events} == {"user-3"}
    assert generation["$ai_framework"] == "langchain"
    assert generation["$ai_model"] == "gpt-4o-mini"
    assert generation["$ai_provider"] == "openai"
    assert generation["$ai_input_tokens"] == count_tokens(PROMPT.format(topic="Paris"))
    assert generation["$ai_output_tokens"] == count_tokens(DEFAULT_REPLY)
    assert generation["$ai_latency"] > 0
    assert trace_tree_problems(events) == []


def test_a_model_called_alone_is_a_generation_under_the_span(llm: FakeLLM, events: list[Any]) -> None:
    model = ChatOpenAI(base_url=llm.openai_url, api_key="sk-test", model="gpt-4o-mini", max_retries=0)

    @posthog_traced
    def handler(event: Any, context: Any) -> None:
        with span("direct"):
            model.invoke("Hello there", config={"callbacks": [CallbackHandler(client=posthog_client())]})

    handler({}, None)
    generation = one(events, "$ai_generation")["properties"]
    assert generation["$ai_parent_id"] == one(events, "$ai_span", "direct")["properties"]["$ai_span_id"]
    assert generation["$ai_trace_id"] == one(events, "$ai_trace")["properties"]["$ai_trace_id"]
    assert trace_tree_problems(events) == []


def test_privacy_mode_reaches_the_callback_handler(llm: FakeLLM, events: list[Any]) -> None:
    chain = chain_for(llm)

    @posthog_traced(privacy_mode=True)
    def handler(event: dict[str, Any], context: Any) -> None:
        chain.invoke(event, config={"callbacks": [CallbackHandler(client=posthog_client())]})

    handler({"topic": "a private matter"}, None)
    assert "a private matter" not in str(events)
    assert DEFAULT_REPLY not in str(events)
    generation = one(events, "$ai_generation")["properties"]
    assert generation["$ai_output_tokens"] == count_tokens(DEFAULT_REPLY)


def test_a_trace_id_given_to_the_callback_handler_is_kept(llm: FakeLLM, events: list[Any]) -> None:
    chain = chain_for(llm)

    @posthog_traced
    def handler(event: dict[str, Any], context: Any) -> None:
        callbacks = [CallbackHandler(client=posthog_client(), trace_id="lc-conversation-1", distinct_id="user-lc")]
        chain.invoke(event, config={"callbacks": callbacks})

    handler({"topic": "Paris"}, None)
    own = [e for e in events if e["properties"].get("$ai_trace_id") == "lc-conversation-1"]
    # LangChain's own trace, as the caller asked: its root stays an $ai_trace, its user is kept.
    assert sorted(e["event"] for e in own) == ["$ai_generation", "$ai_span", "$ai_trace"]
    assert {e["distinct_id"] for e in own} == {"user-lc"}
    assert trace_tree_problems(events) == []


def test_async_and_streamed_chains_keep_the_span_through_langchains_executor(llm: FakeLLM, events: list[Any]) -> None:
    import asyncio

    model = ChatOpenAI(base_url=llm.openai_url, api_key="sk-test", model="gpt-4o-mini", stream_usage=True)
    chain = ChatPromptTemplate.from_messages([("user", PROMPT)]) | model

    @posthog_traced
    async def handler(event: dict[str, Any], context: Any) -> str:
        with span("async chains"):
            first = await chain.ainvoke(event, config={"callbacks": [CallbackHandler(client=posthog_client())]})
            pieces = [
                str(piece.content)
                async for piece in chain.astream(
                    event, config={"callbacks": [CallbackHandler(client=posthog_client())]}
                )
            ]
        return f"{first.content}|{''.join(pieces)}"

    assert asyncio.run(handler({"topic": "Rome"}, None)) == f"{DEFAULT_REPLY}|{DEFAULT_REPLY}"
    ours = one(events, "$ai_span", "async chains")["properties"]["$ai_span_id"]
    sequences = [
        e["properties"] for e in by_kind(events, "$ai_span") if e["properties"]["$ai_span_name"] == "RunnableSequence"
    ]
    assert [s["$ai_parent_id"] for s in sequences] == [ours, ours]
    generations = [e["properties"] for e in by_kind(events, "$ai_generation")]
    assert [g["$ai_output_tokens"] for g in generations] == [count_tokens(DEFAULT_REPLY)] * 2
    assert trace_tree_problems(events) == []
