// Real JavaScript clients against `rfc serve`: the Vercel AI SDK with the OpenAI-compatible
// provider and with the Ollama provider. For each, generateText and streamText at
// temperature 0 must give the same text. Prints one JSON object; exits 1 on a failure.
// Usage: node clients.mjs BASE_URL MODEL
import { generateText, streamText } from "ai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { createOllama } from "ollama-ai-provider-v2";

const [baseURL, modelId] = process.argv.slice(2);
const instructions = "You are a helpful assistant.";
const messages = [{ role: "user", content: "What is the capital of France?" }];

async function both(model) {
  const settings = { model, instructions, messages, temperature: 0, maxOutputTokens: 16 };
  const whole = await generateText(settings);
  const stream = streamText(settings);
  let streamed = "";
  for await (const delta of stream.textStream) streamed += delta;
  return { generated: whole.text, streamed, finishReason: whole.finishReason, outputTokens: whole.usage.outputTokens };
}

const openaiCompatible = createOpenAICompatible({ name: "rfc", baseURL: `${baseURL}/v1`, apiKey: "unused" });
const ollama = createOllama({ baseURL: `${baseURL}/api` });
const result = {
  openaiCompatible: await both(openaiCompatible.chatModel(modelId)),
  ollama: await both(ollama(modelId)),
};
console.log(JSON.stringify(result));
