"""Agent frameworks' own calls against a real `rfc serve` of SmolLM2 with Qwen2.5's template:
the context-window exceptions they map from the errors (litellm, the openai and anthropic
SDKs as langchain and pydantic-ai read them), and nested pydantic models through forced tool
calls (pydantic-ai, instructor, openai-agents, langchain-openai). A framework that is not
installed is skipped, saying so: their pins of `openai` conflict (llama-index wants `openai<3`,
openai-agents `openai>=3`), so the test extras install none of them:
`python -m tests.e2e.clients.framework_envs [FAMILY...]` makes one environment per family and
runs its checks there (tests/e2e/clients/framework_envs.py)."""

import os

import anthropic
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.clients.conftest import TOOLS_QWEN

pytestmark = [pytest.mark.shared, pytest.mark.slow]
LONG = "hello " * 9000  # past SmolLM2's 8192 tokens
ASK = "Add Bob, who is 30, to the team led by Ann, who is 41."


class Person(BaseModel):
    name: str = Field(max_length=12)
    age: int


class Team(BaseModel):
    lead: Person  # a nested model: `$ref` into `$defs` in the tool's parameters
    members: list[Person] = Field(max_length=2)


def test_openai_sdk_context_overflow_as_langchain_and_pydantic_ai_read_it(tools_url):
    """langchain-openai raises OpenAIContextOverflowError and pydantic-ai
    ModelContextWindowExceededError on a BadRequestError whose code is context_length_exceeded."""
    client = openai.OpenAI(base_url=tools_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=TOOLS_QWEN, messages=[{"role": "user", "content": LONG}], max_tokens=5)
    assert e.value.code == "context_length_exceeded" and "maximum context length" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=TOOLS_QWEN, input=LONG, max_output_tokens=16)
    assert e.value.code == "context_length_exceeded"


def test_anthropic_sdk_prompt_too_long(tools_url):
    client = anthropic.Anthropic(base_url=tools_url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=TOOLS_QWEN, max_tokens=5, messages=[{"role": "user", "content": LONG}])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert e.value.body["error"]["message"].startswith("prompt is too long: ")


def test_litellm_context_window_exceeded(tools_url):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
    litellm = pytest.importorskip("litellm")
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(
            model=f"openai/{TOOLS_QWEN}",
            api_base=tools_url + "/v1",
            api_key="unused",
            max_tokens=5,
            messages=[{"role": "user", "content": LONG}],
            num_retries=0,
        )


def _check_team(team: Team) -> None:
    assert isinstance(team, Team) and isinstance(team.lead, Person) and all(isinstance(m, Person) for m in team.members)


def test_pydantic_ai_nested_output_type(tools_url):
    pytest.importorskip(
        "pydantic_ai", reason="pydantic-ai is not installed: python -m tests.e2e.clients.framework_envs pydantic-ai"
    )
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    model = OpenAIChatModel(TOOLS_QWEN, provider=OpenAIProvider(base_url=tools_url + "/v1", api_key="unused"))
    result = Agent(model, output_type=Team, retries=0).run_sync(
        ASK, model_settings={"temperature": 0, "max_tokens": 200}
    )
    _check_team(result.output)


def test_instructor_tools_and_iterable(tools_url):
    instructor = pytest.importorskip(
        "instructor", reason="instructor is not installed: python -m tests.e2e.clients.framework_envs instructor"
    )
    for mode in (instructor.Mode.TOOLS, instructor.Mode.RESPONSES_TOOLS):
        client = instructor.from_openai(
            openai.OpenAI(base_url=tools_url + "/v1", api_key="unused", max_retries=0), mode=mode
        )
        _check_team(
            client.create(
                model=TOOLS_QWEN,
                response_model=Team,
                messages=[{"role": "user", "content": ASK}],
                max_retries=0,
                temperature=0,
                **({"max_output_tokens": 200} if mode == instructor.Mode.RESPONSES_TOOLS else {"max_tokens": 200}),
            )
        )
    client = instructor.from_openai(
        openai.OpenAI(base_url=tools_url + "/v1", api_key="unused", max_retries=0), mode=instructor.Mode.TOOLS
    )
    people = client.chat.completions.create_iterable(
        model=TOOLS_QWEN,
        response_model=Person,
        max_retries=0,
        temperature=0,
        max_tokens=200,
        messages=[{"role": "user", "content": ASK}],
    )
    assert all(isinstance(p, Person) for p in people)


def test_openai_agents_pydantic_argument_tool(tools_url):
    pytest.importorskip(
        "agents", reason="openai-agents is not installed: python -m tests.e2e.clients.framework_envs openai-agents"
    )
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    added: list[Person] = []

    @function_tool
    def add_member(person: Person) -> str:
        """Add a person to the team."""
        added.append(person)
        return "added"

    client = openai.AsyncOpenAI(base_url=tools_url + "/v1", api_key="unused", max_retries=0)
    model = OpenAIChatCompletionsModel(model=TOOLS_QWEN, openai_client=client)
    agent = Agent(
        name="team",
        instructions="Use the tool.",
        model=model,
        tools=[add_member],
        model_settings=ModelSettings(tool_choice="required", temperature=0, max_tokens=120),
        tool_use_behavior="stop_on_first_tool",
    )
    Runner.run_sync(agent, ASK, max_turns=2)
    assert added and isinstance(added[0], Person)


def test_langchain_openai_context_overflow(tools_url):
    pytest.importorskip(
        "langchain_openai",
        reason="langchain-openai is not installed: python -m tests.e2e.clients.framework_envs langchain",
    )
    from langchain_openai import ChatOpenAI
    from langchain_openai.chat_models.base import OpenAIContextOverflowError

    llm = ChatOpenAI(model=TOOLS_QWEN, base_url=tools_url + "/v1", api_key="unused", max_retries=0, max_tokens=5)
    with pytest.raises(OpenAIContextOverflowError):
        llm.invoke(LONG)
    _check_team(
        llm.with_structured_output(Team, method="function_calling").bind(max_tokens=200, temperature=0).invoke(ASK)
    )
