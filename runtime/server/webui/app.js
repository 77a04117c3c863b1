// rfc's web chat page: the model picker (GET /v1/models), a streamed chat (POST
// /v1/chat/completions, SSE read from fetch's ReadableStream; Stop aborts the fetch, and the
// server cancels a request whose client went away), the server's health and queue (GET
// /health), and the API key when the server asks for one. Every message goes through
// markdown.js, which never hands text to an HTML parser. URLs are relative to the page.

import { renderMarkdown } from "./markdown.js";

const KEY_STORAGE = "rfc.apiKey";
const HEALTH_EVERY_MS = 3000;
const MODELS_RETRY_MS = 2000;  // while the server loads (503) or cannot be reached

const $ = (id) => document.getElementById(id);
const ui = {
  model: $("model"), transcript: $("transcript"), empty: $("empty"), banner: $("banner"),
  composer: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"), newChat: $("new-chat"),
  health: $("health"), healthStatus: $("health-status"), healthActive: $("health-active"),
  healthQueued: $("health-queued"), healthKv: $("health-kv"),
  keyDialog: $("key-dialog"), keyForm: $("key-form"), keyReason: $("key-reason"), key: $("key"),
};

const chat = { messages: [], controller: null };

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function headers(json) {
  const out = json ? { "Content-Type": "application/json" } : {};
  const key = apiKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

/** The message of an error reply, in whichever API's shape it came. */
async function errorMessage(response) {
  try {
    const body = await response.json();
    const error = body.error ?? body;
    return typeof error === "string" ? error : error.message ?? JSON.stringify(body);
  } catch {
    return `HTTP ${response.status}`;
  }
}

function showBanner(text) {
  ui.banner.textContent = text ?? "";
  ui.banner.hidden = !text;
}

function askKey(reason) {
  ui.keyReason.textContent = reason;
  ui.key.value = "";
  if (!ui.keyDialog.open) ui.keyDialog.showModal();
  ui.key.focus();
}

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const key = ui.key.value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY_STORAGE, key);
  ui.keyDialog.close();
  loadModels();
});

// -- models ------------------------------------------------------------------------------

async function loadModels() {
  let response;
  try {
    response = await fetch("v1/models", { headers: headers(false), cache: "no-store" });
  } catch {
    showBanner("The server cannot be reached.");
    setTimeout(loadModels, MODELS_RETRY_MS);
    return;
  }
  if (response.status === 401) {
    askKey(apiKey() ? "The server refused that key. Enter another." : "This server needs an API key.");
    return;
  }
  if (!response.ok) {
    showBanner(`Models: ${await errorMessage(response)}`);
    if (response.status === 503) setTimeout(loadModels, MODELS_RETRY_MS);  // still loading
    return;
  }
  const { data } = await response.json();
  const chosen = ui.model.value;
  ui.model.replaceChildren(...data.map((card) => {
    const option = document.createElement("option");
    option.value = option.textContent = card.id;
    const facts = [card.parameter_size, card.quantization, card.device && `on ${card.device}`, card.context_length && `${card.context_length} ctx`];
    option.title = card.error ?? facts.filter(Boolean).join(" · ");
    option.disabled = card.status === "failed";  // listed by the server, not served
    return option;
  }));
  if (data.some((card) => card.id === chosen && card.status !== "failed")) ui.model.value = chosen;
  showBanner(data.length ? "" : "The server serves no model.");
}

// -- health ------------------------------------------------------------------------------

async function pollHealth() {
  try {
    const response = await fetch("health", { cache: "no-store" });  // open without a key
    const health = await response.json();
    const requests = health.checks?.requests;
    const cache = health.checks?.cache;
    ui.health.dataset.status = health.status;
    ui.healthStatus.textContent = health.checks?.engine?.draining ? "draining" : health.status;
    ui.healthActive.textContent = requests ? requests.active : "–";
    ui.healthQueued.textContent = requests ? requests.queued : "–";
    ui.healthKv.textContent = cache ? `${cache.pages_used}/${cache.pages_total} pages` : "–";
  } catch {
    ui.health.dataset.status = "unreachable";
    ui.healthStatus.textContent = "unreachable";
  }
  setTimeout(pollHealth, HEALTH_EVERY_MS);
}

// -- messages ----------------------------------------------------------------------------

function scrollToEnd(force) {
  const t = ui.transcript;
  if (force || t.scrollHeight - t.scrollTop - t.clientHeight < 120) t.scrollTop = t.scrollHeight;
}

function addUserMessage(text) {
  ui.empty.hidden = true;
  const node = document.createElement("article");
  node.className = "message user";
  const body = document.createElement("div");
  body.className = "body";
  body.append(renderMarkdown(text));
  node.append(body);
  ui.transcript.append(node);
  scrollToEnd(true);
}

/** The assistant's reply as it streams: its reasoning (collapsed), its text, its numbers. */
class Reply {
  constructor() {
    this.content = "";
    this.reasoning = "";
    this.node = document.createElement("article");
    this.node.className = "message assistant";
    this.node.dataset.state = "waiting";
    this.thinking = document.createElement("details");
    this.thinking.className = "reasoning";
    this.thinking.hidden = true;
    this.thinkingLabel = document.createElement("summary");
    this.thinkingLabel.textContent = "Reasoning";
    this.thinkingBody = document.createElement("div");
    this.thinking.append(this.thinkingLabel, this.thinkingBody);
    this.body = document.createElement("div");
    this.body.className = "body";
    this.stats = document.createElement("div");
    this.stats.className = "stats";
    this.stats.textContent = "waiting for the first token…";
    this.node.append(this.thinking, this.body, this.stats);
    ui.transcript.append(this.node);
    this.pending = false;
    scrollToEnd(true);
  }

  add(delta) {
    if (delta.reasoning_content) this.reasoning += delta.reasoning_content;
    if (delta.content) this.content += delta.content;
    this.node.dataset.state = "streaming";
    if (!this.pending) {  // one render per frame, however many tokens arrived in it
      this.pending = true;
      requestAnimationFrame(() => this.render());
    }
  }

  render() {
    this.pending = false;
    if (this.reasoning) {
      this.thinking.hidden = false;
      this.thinkingBody.replaceChildren(renderMarkdown(this.reasoning));
      this.thinkingLabel.textContent = this.content ? "Reasoning" : "Reasoning…";
    }
    this.body.replaceChildren(renderMarkdown(this.content));
    scrollToEnd(false);
  }

  finish(state, stats, error) {
    this.render();
    this.node.dataset.state = state;
    this.stats.textContent = stats;
    if (error) {
      const problem = document.createElement("p");
      problem.className = "error";
      problem.textContent = error;
      this.node.insertBefore(problem, this.stats);
    }
  }
}

// -- streaming ---------------------------------------------------------------------------

/** The data of each server-sent event of a response body, as it arrives. */
async function* sseData(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(l[5] === " " ? 6 : 5));
      if (data.length) yield data.join("\n");
    }
  }
}

/** TTFT, rate and count of a reply, as this page measured them. `tokens` is the server's
 * count when it sent its usage, else the deltas received (one per token, near enough). */
function describe({ started, first, last, tokens, counted, finish }) {
  const parts = [];
  if (first !== null) {
    parts.push(`TTFT ${Math.round(first - started)} ms`);
    if (tokens > 1 && last > first) parts.push(`${(((tokens - 1) * 1000) / (last - first)).toFixed(1)} tok/s`);
  }
  parts.push(`${counted ? "" : "≈"}${tokens} tokens`);
  if (finish) parts.push(finish);
  return parts.join(" · ");
}

async function send(text) {
  const model = ui.model.value;
  chat.messages.push({ role: "user", content: text });
  addUserMessage(text);
  const reply = new Reply();
  const controller = new AbortController();
  chat.controller = controller;
  setBusy(true);
  const m = { started: performance.now(), first: null, last: null, tokens: 0, counted: false, finish: null };
  let state = "done";
  let error = null;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(true),
      body: JSON.stringify({ model: model || undefined, messages: chat.messages, stream: true, stream_options: { include_usage: true } }),
      signal: controller.signal,
    });
    if (!response.ok) throw new HttpError(response.status, await errorMessage(response));
    for await (const data of sseData(response.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message ?? String(chunk.error));
      if (chunk.usage) {
        m.tokens = chunk.usage.completion_tokens;
        m.counted = true;
      }
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      const delta = choice.delta ?? {};
      if (delta.content || delta.reasoning_content) {
        m.last = performance.now();
        m.first ??= m.last;
        if (!m.counted) m.tokens++;
        reply.add(delta);
      }
      if (choice.finish_reason) m.finish = choice.finish_reason;
    }
  } catch (e) {
    if (e.name === "AbortError") {
      state = "stopped";
      m.finish = "stopped";
    } else {
      state = "error";
      error = e.message;
      if (e.status === 401) askKey("The server asks for an API key.");
    }
  } finally {
    chat.controller = null;
    setBusy(false);
  }
  reply.finish(state, describe(m), error);
  if (reply.content) chat.messages.push({ role: "assistant", content: reply.content });
  else if (state === "error") chat.messages.pop();  // nothing came of it: the user may send it again
}

function setBusy(busy) {
  ui.send.hidden = busy;
  ui.stop.hidden = !busy;
  ui.model.disabled = busy;
  ui.newChat.disabled = busy;
  if (!busy) ui.prompt.focus();
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.prompt.value;
  if (!text.trim() || chat.controller) return;
  ui.prompt.value = "";
  send(text);
});

ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});

ui.stop.addEventListener("click", () => chat.controller?.abort());

ui.newChat.addEventListener("click", () => {
  chat.messages = [];
  ui.transcript.replaceChildren(ui.empty);
  ui.empty.hidden = false;
});

loadModels();
pollHealth();
ui.prompt.focus();
