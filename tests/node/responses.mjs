// The AI SDK's default OpenAI provider, `openai(id)`, speaks the Responses API: against
// `rfc serve` it must do a tool round trip with generateText (a call, its result sent back,
// an answer), generateObject with a zod schema, and a two-turn conversation by
// previous_response_id. Prints one JSON object; exits 1 on a failure.
// Usage: node responses.mjs BASE_URL MODEL API_KEY
import { generateObject, generateText, stepCountIs, tool } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { z } from "zod";

const [baseURL, modelId, apiKey] = process.argv.slice(2);
const openai = createOpenAI({ baseURL: `${baseURL}/v1`, apiKey });
const model = openai(modelId);

const executed = [];
const tools = {
  get_weather: tool({
    description: "Current weather in a city",
    inputSchema: z.object({ city: z.string().max(20), unit: z.enum(["C", "F"]) }),
    execute: async ({ city, unit }) => { executed.push(city); return { city, temperature: 21, unit }; },
  }),
};
const round = await generateText({
  model, tools, temperature: 0, maxOutputTokens: 80, stopWhen: stepCountIs(2),
  prompt: "What is the weather in Paris?",
  prepareStep: ({ stepNumber }) => ({ toolChoice: stepNumber === 0 ? "required" : "none" }),
});
const object = await generateObject({
  model, temperature: 0, maxOutputTokens: 80,
  schema: z.object({ name: z.string().max(20), age: z.number().int().min(0).max(30) }),
  prompt: "Describe a cat as a JSON object with its name and age.",
});
const first = await generateText({ model, temperature: 0, maxOutputTokens: 16, prompt: "My name is Ada. Say hello." });
const firstId = first.providerMetadata.openai.responseId;
const second = await generateText({
  model, temperature: 0, maxOutputTokens: 16, prompt: "What is my name?",
  providerOptions: { openai: { previousResponseId: firstId } },
});
console.log(JSON.stringify({
  steps: round.steps.map((s) => ({ finishReason: s.finishReason, calls: s.toolCalls.map((c) => c.toolName),
                                   results: s.toolResults.map((r) => r.output) })),
  executed,
  text: round.text,
  object: object.object,
  firstId,
  secondId: second.providerMetadata.openai.responseId,
  secondInputTokens: second.usage.inputTokens,
  firstInputTokens: first.usage.inputTokens,
}));
