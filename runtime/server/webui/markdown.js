// A small Markdown renderer for chat messages (the model's and the user's alike). It builds
// DOM nodes and puts text in them with createTextNode / textContent only: no string it is
// given ever reaches an HTML parser, so `<script>` or `<img onerror=…>` in a reply shows as
// those characters. Links keep only absolute http(s) and mailto URLs; images are never
// loaded (they become links). What it knows: fenced code blocks (an unclosed fence, as
// while a reply streams, runs to the end), headings, block quotes, lists, rules, paragraphs
// (a newline is a line break), and inline code, bold, italics, strike-through, links and
// bare URLs.

const LINK_SCHEMES = new Set(["http:", "https:", "mailto:"]);

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}>[ \t]?(.*)$/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])[ \t]+(.*)$/;

// One alternative per inline form; the first that matches at the earliest position wins.
const INLINE = new RegExp([
  "(`+)([^`][\\s\\S]*?)\\1(?!`)",                                  // 1, 2: code span
  "(!?)\\[([^\\]\\n]*)\\]\\(\\s*<?([^\\s()<>]*)>?(?:\\s+\"[^\"\\n]*\")?\\s*\\)", // 3, 4, 5: link or image
  "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*",                            // 6: bold
  "__(?=\\S)([\\s\\S]*?\\S)__",                                    // 7: bold
  "~~(?=\\S)([\\s\\S]*?\\S)~~",                                    // 8: strike-through
  "\\*(?=[^\\s*])([^*\\n]*?[^\\s*])\\*",                           // 9: italics
  "(?<![\\w])_(?=[^\\s_])([^_\\n]*?[^\\s_])_(?![\\w])",            // 10: italics
  "(https?:\\/\\/[^\\s<>\"'`]*[^\\s<>\"'`.,;:!?)\\]])",             // 11: bare URL
  "(\\n)",                                                         // 12: line break
].join("|"), "g");

/** The DOM of `text` rendered as Markdown, as a DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  renderBlocks(fragment, String(text).replace(/\r\n?/g, "\n").split("\n"));
  return fragment;
}

/** A URL fit for a link (absolute, http(s) or mailto), normalised; else null. */
export function safeLinkUrl(raw) {
  let url;
  try {
    url = new URL(raw);  // no base: a relative URL throws. The parser drops tabs and newlines, so "java\tscript:" is seen as what a browser would follow
  } catch {
    return null;
  }
  return LINK_SCHEMES.has(url.protocol) ? url.href : null;
}

function el(tag, className) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  return node;
}

function renderBlocks(parent, lines) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    let m;
    if (!line.trim()) {
      i++;
    } else if ((m = FENCE.exec(line))) {
      const close = new RegExp(`^ {0,3}${m[1][0] === "`" ? "`" : "~"}{${m[1].length},}[ \\t]*$`);
      const body = [];
      for (i++; i < lines.length && !close.test(lines[i]); i++) body.push(lines[i]);
      i++;  // the closing fence (past the end when the fence is still open)
      parent.append(codeBlock(body.join("\n"), m[2]));
    } else if ((m = HEADING.exec(line))) {
      const heading = el(`h${m[1].length}`);
      renderInline(heading, m[2]);
      parent.append(heading);
      i++;
    } else if (RULE.test(line)) {
      parent.append(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      for (; i < lines.length && (m = QUOTE.exec(lines[i])); i++) inner.push(m[1]);
      const quote = el("blockquote");
      renderBlocks(quote, inner);
      parent.append(quote);
    } else if (ITEM.test(line)) {
      i = renderList(parent, lines, i);
    } else {
      const text = [];
      for (; i < lines.length && lines[i].trim() && !startsBlock(lines[i]); i++) text.push(lines[i].trim());
      const paragraph = el("p");
      renderInline(paragraph, text.join("\n"));
      parent.append(paragraph);
    }
  }
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

/** The list that starts at lines[start], each item with the lines under it (indented ones
 * de-indented, so they can hold nested blocks); returns the index of the line after it. */
function renderList(parent, lines, start) {
  const isOrdered = (m) => /\d/.test(m[2]);
  const first = ITEM.exec(lines[start]);
  const ordered = isOrdered(first);
  const list = el(ordered ? "ol" : "ul");
  if (ordered && parseInt(first[2], 10) !== 1) list.start = parseInt(first[2], 10);
  let i = start;
  for (let m; i < lines.length && (m = ITEM.exec(lines[i])) && isOrdered(m) === ordered;) {
    const width = m[1].length + m[2].length + 1;
    const body = [m[3]];
    for (i++; i < lines.length; i++) {
      const next = lines[i];
      const indent = next.length - next.trimStart().length;
      if (!next.trim()) {
        const after = lines[i + 1] ?? "";
        if (/^ {2,}\S/.test(after)) {
          body.push("");  // a blank line inside the item
          continue;
        }
        if (ITEM.test(after)) i++;  // a blank line between two items
        break;
      }
      if (indent >= 2) body.push(next.slice(Math.min(indent, width)));
      else if (!startsBlock(next)) body.push(next);  // a lazy continuation line
      else break;
    }
    const item = el("li");
    renderBlocks(item, body);
    list.append(item);
  }
  parent.append(list);
  return i;
}

function codeBlock(source, language) {
  const block = el("div", "code-block");
  const head = el("div", "code-head");
  const label = el("span", "code-lang");
  label.textContent = language || "text";
  const copy = el("button", "code-copy");
  copy.type = "button";
  copy.textContent = "copy";
  copy.addEventListener("click", () => {
    navigator.clipboard?.writeText(source).then(() => { copy.textContent = "copied"; }, () => { copy.textContent = "copy failed"; });
  });
  head.append(label, copy);
  const pre = el("pre");
  const code = el("code");
  if (/^[\w+#.-]{1,32}$/.test(language)) code.dataset.lang = language;
  code.textContent = source;
  pre.append(code);
  block.append(head, pre);
  return block;
}

function renderInline(parent, text) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    last = m.index + m[0].length;
    parent.append(inlineNode(m));
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

function inlineNode(m) {
  if (m[1] !== undefined) {
    const code = el("code");
    const inner = m[2];
    code.textContent = /^ .* $/s.test(inner) && inner.trim() ? inner.slice(1, -1) : inner;
    return code;
  }
  if (m[5] !== undefined) return link(m[0], m[4], m[5]);  // an image too: shown as a link, never loaded
  const wrap = (tag, inner) => {
    const node = el(tag);
    renderInline(node, inner);
    return node;
  };
  if (m[6] !== undefined) return wrap("strong", m[6]);
  if (m[7] !== undefined) return wrap("strong", m[7]);
  if (m[8] !== undefined) return wrap("del", m[8]);
  if (m[9] !== undefined) return wrap("em", m[9]);
  if (m[10] !== undefined) return wrap("em", m[10]);
  if (m[11] !== undefined) return link(m[11], m[11], m[11]);
  return el("br");
}

/** An <a> to `url` showing `label`, or the source text when the URL is not fit for a link. */
function link(source, label, url) {
  const href = safeLinkUrl(url);
  if (href === null) return document.createTextNode(source);
  const a = el("a");
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  a.textContent = label || href;
  return a;
}
