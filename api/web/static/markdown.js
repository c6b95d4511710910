// Markdown for model replies, rendered so that nothing the model writes can run or load:
// marked (vendored) parses, with raw HTML and images shown as the text they are and links kept
// only for http(s) and mailto; DOMPurify (vendored) then sanitizes what marked built, as a second
// wall. Code blocks get a language label, a Copy button and highlight.js colours (vendored;
// highlighted only for a language it knows, otherwise plain monospace).
"use strict";

window.SGMarkdown = (() => {
  const SAFE_URL = /^(https?:|mailto:)/i;
  const escapeHtml = (text) => String(text)
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&#39;");

  const md = new marked.Marked({ gfm: true, breaks: true, async: false });
  md.use({
    renderer: {
      html(token) { return escapeHtml(token.text); }, // raw HTML is shown, never parsed
      image(token) { return escapeHtml(token.raw); }, // no request to wherever a model points
      link(token) {
        const label = this.parser.parseInline(token.tokens);
        const href = String(token.href || "").trim();
        if (!SAFE_URL.test(href)) return escapeHtml(token.raw); // javascript:, data:, ...: text
        const title = token.title ? ` title="${escapeHtml(token.title)}"` : "";
        return `<a href="${escapeHtml(href)}"${title}>${label}</a>`;
      },
      code(token) { return `<pre><code>${escapeHtml(token.text)}</code></pre>`; },
    },
  });

  const PURIFY = {
    FORBID_TAGS: ["style", "img", "svg", "math", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
    FORBID_ATTR: ["style", "class", "id"],
    ALLOW_DATA_ATTR: false,
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:)/i,
    RETURN_DOM_FRAGMENT: true,
  };

  function copyButton(getText, label = "Copy") {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "ghost small copy";
    button.textContent = label;
    button.addEventListener("click", async () => {
      const ok = await copyText(getText());
      button.textContent = ok ? "Copied" : "Copy failed";
      setTimeout(() => { button.textContent = label; }, 1500);
    });
    return button;
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      return false;
    }
  }

  // Renders `text` into `el` (replacing what was there).
  function render(el, text) {
    const tokens = md.lexer(text);
    const langs = []; // each code block's language, in document order
    md.walkTokens(tokens, (t) => {
      if (t.type === "code") langs.push((t.lang || "").trim().split(/\s+/)[0].toLowerCase());
    });
    const fragment = DOMPurify.sanitize(md.parser(tokens), PURIFY);
    for (const link of fragment.querySelectorAll("a[href]")) {
      link.target = "_blank";
      link.rel = "noopener noreferrer nofollow";
    }
    fragment.querySelectorAll("pre > code").forEach((code, i) => decorate(code, langs[i] || ""));
    el.replaceChildren(fragment);
  }

  // A code block: a head with its language and a Copy button, highlight.js colours if known.
  function decorate(code, lang) {
    const pre = code.parentElement;
    const block = document.createElement("div");
    block.className = "code";
    const head = document.createElement("div");
    head.className = "code-head";
    const name = document.createElement("span");
    name.textContent = lang || "text";
    head.append(name, copyButton(() => code.textContent, "Copy code"));
    pre.replaceWith(block);
    block.append(head, pre);
    if (lang && window.hljs && hljs.getLanguage(lang)) {
      code.className = "language-" + lang;
      hljs.highlightElement(code);
    }
  }

  return { render, copyButton };
})();
