// The Vercel AI SDK's tool calling and structured output against `rfc serve`, through the
// OpenAI-compatible provider: generateText with tools and toolChoice "required" must give a
// valid call, streamText the same call, and generateObject an object its zod schema accepts.
// Prints one JSON object; exits 1 on a failure.
// Usage: node tools.mjs BASE_URL MODEL
import { generateObject, generateText, streamText, tool } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { z } from "zod";

const [baseURL, modelId] = process.argv.slice(2);
const provider = createOpenAICompatible({ name: "rfc", baseURL: `${baseURL}/v1`, apiKey: "unused", supportsStructuredOutputs: true });
const model = provider.chatModel(modelId);
const tools = {
  get_weather: tool({
    description: "Current weather in a city",
    inputSchema: z.object({ city: z.string().max(30), unit: z.enum(["C", "F"]) }),
  }),
};
const settings = {
  model, tools, toolChoice: "required", temperature: 0, maxOutputTokens: 120,
  messages: [{ role: "user", content: "What is the weather in Paris?" }],
};
const whole = await generateText(settings);
const stream = streamText(settings);
const streamedCalls = await stream.toolCalls;
const object = await generateObject({
  model, temperature: 0, maxOutputTokens: 200,
  schema: z.object({ name: z.string().max(40), age: z.number().int().min(0).max(40) }),
  prompt: "Reply with a JSON object with two keys: the name and the age of a cat.",
});
const pick = (calls) => calls.map((c) => ({ toolName: c.toolName, input: c.input }));
console.log(JSON.stringify({
  finishReason: whole.finishReason,
  calls: pick(whole.toolCalls),
  streamedCalls: pick(streamedCalls),
  object: object.object,
}));
