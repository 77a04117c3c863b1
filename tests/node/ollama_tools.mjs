// ollama-ai-provider-v2's tool choice against `rfc serve`: it sends OpenAI's `tool_choice`
// beside Ollama's `tools`, and the AI SDK checks the reply against it (a reply without the
// call it asked for is an AI_ToolChoiceViolationError). generateText with toolChoice
// "required" and with a named tool must each call; "none" must not.
// Prints one JSON object; exits 1 on a failure.
// Usage: node ollama_tools.mjs BASE_URL MODEL
import { generateText, tool } from "ai";
import { createOllama } from "ollama-ai-provider-v2";
import { z } from "zod";

const [baseURL, modelId] = process.argv.slice(2);
const model = createOllama({ baseURL: `${baseURL}/api` })(modelId);
const tools = {
  get_weather: tool({ description: "Current weather in a city", inputSchema: z.object({ city: z.string().max(30) }) }),
  get_time: tool({ description: "Current time in a timezone", inputSchema: z.object({ timezone: z.string().max(30) }) }),
};
const messages = [{ role: "user", content: "Hello there!" }];
const calls = async (toolChoice) => {
  const r = await generateText({ model, tools, toolChoice, messages, temperature: 0, maxOutputTokens: 80 });
  return { finishReason: r.finishReason, calls: r.toolCalls.map((c) => ({ toolName: c.toolName, input: c.input })) };
};
console.log(JSON.stringify({
  required: await calls("required"),
  named: await calls({ type: "tool", toolName: "get_time" }),
  none: await calls("none"),
}));
