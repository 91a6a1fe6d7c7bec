"""``GET /docs``: the OpenAPI document as a readable reference page.

One self-contained HTML page: its style and script are inline and it loads nothing
but ``openapi.json`` beside it (a relative URL, so it also works behind a proxy that
serves the API under a path prefix). The script renders each path, method,
parameter, response and schema with DOM text nodes only, never as markup. A
Content-Security-Policy allows exactly that style and script, by hash, and
connections to this origin.
"""

from __future__ import annotations

import base64
import hashlib
import json

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

DOCUMENT = "./openapi.json"

STYLE = """
:root { color-scheme: light dark; --line: #8884; --soft: #8881; --accent: #2a6f97; }
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 62rem;
       padding: 1rem 1.5rem 4rem; }
h1 { margin-bottom: 0; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid var(--line); padding-bottom: .2rem; }
h3 { margin: 1.2rem 0 .4rem; }
h4 { margin: 1rem 0 .3rem; }
code, .mono { font-family: ui-monospace, monospace; font-size: .92em; }
.method { color: var(--accent); font-weight: 700; text-transform: uppercase; }
.muted { opacity: .75; }
.error { color: #b00020; font-weight: 600; }
.operation { border: 1px solid var(--line); border-radius: 6px; margin: 1rem 0;
             padding: 0 1rem .8rem; }
.status { font-weight: 700; }
table { border-collapse: collapse; margin: .3rem 0 .8rem; width: 100%; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: left;
         vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td > table { margin: .3rem 0 0; }
nav ul { columns: 2; padding-left: 1.2rem; }
.required { color: #b00020; }
"""

SCRIPT = r"""
"use strict";
const DOCUMENT = __DOCUMENT__;
const main = document.getElementById("main");
let spec = {};

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    node.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === "") continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function code(text) { return el("code", {}, String(text)); }
function json(value) { return JSON.stringify(value); }

function resolve(node) {
  let seen = 0;
  while (node && typeof node.$ref === "string" && node.$ref.startsWith("#/") && seen < 20) {
    let target = spec;
    for (const part of node.$ref.slice(2).split("/")) {
      const key = part.replace(/~1/g, "/").replace(/~0/g, "~");
      target = target === undefined ? undefined : target[key];
    }
    node = target;
    seen += 1;
  }
  return node || {};
}

function schemaName(ref) {
  return ref.startsWith("#/components/schemas/") ? ref.split("/").pop() : null;
}

function anchor(kind, name) { return kind + "-" + name.replace(/[^A-Za-z0-9_-]/g, "_"); }

// One line describing a schema: its type and every constraint it states.
function describe(schema) {
  if (!schema || typeof schema !== "object") return [code("any")];
  if (schema.$ref) {
    const name = schemaName(schema.$ref);
    const link = name ? el("a", {href: "#" + anchor("schema", name)}, name) : code(schema.$ref);
    const note = schema.description ? el("span", {class: "muted"}, schema.description) : null;
    return [link, note ? " " : "", note];
  }
  const parts = [];
  for (const keyword of ["oneOf", "anyOf", "allOf"]) {
    if (Array.isArray(schema[keyword])) {
      const words = {oneOf: "one of", anyOf: "any of", allOf: "all of"};
      parts.push(words[keyword] + ": ");
      schema[keyword].forEach((option, i) => {
        if (i) parts.push(keyword === "allOf" ? " & " : " | ");
        parts.push(describe(option));
      });
    }
  }
  const types = [].concat(schema.type || []);
  if (types.includes("array")) {
    parts.push(schema.items ? ["array of ", describe(schema.items)] : code("array"));
    const others = types.filter((t) => t !== "array");
    if (others.length) parts.push(" or ", code(others.join(" | ")));
  } else if (types.length) {
    parts.push(code(types.join(" | ")));
  } else if (!parts.length) {
    parts.push(code("any"));
  }
  const notes = [];
  const plain = [
    ["format", "format"], ["pattern", "pattern"], ["minimum", "≥"], ["maximum", "≤"],
    ["minLength", "min length"], ["maxLength", "max length"], ["minItems", "min items"],
    ["maxItems", "max items"], ["default", "default"], ["const", "always"],
  ];
  for (const [keyword, word] of plain) {
    if (schema[keyword] !== undefined) {
      const value = typeof schema[keyword] === "string" ? schema[keyword] : json(schema[keyword]);
      notes.push([word + " ", code(value)]);
    }
  }
  if (Array.isArray(schema.enum)) {
    notes.push(["one of ", schema.enum.map((v, i) => [i ? ", " : "", code(v)])]);
  }
  if (Array.isArray(schema.prefixItems)) {
    const items = schema.prefixItems.map((s, i) => [i ? ", " : "", describe(s)]);
    notes.push(["items in order: ", items]);
  }
  if (schema.additionalProperties === false) notes.push(["no other properties"]);
  if (Array.isArray(schema.examples) && schema.examples.length) {
    notes.push(["e.g. ", code(json(schema.examples[0]))]);
  }
  if (notes.length) {
    parts.push(" (");
    notes.forEach((note, i) => parts.push(i ? "; " : "", note));
    parts.push(")");
  }
  if (schema.description) parts.push(" ", el("span", {class: "muted"}, schema.description));
  const table = properties(schema);
  if (table) parts.push(table);
  return parts;
}

function properties(schema) {
  const entries = Object.entries(schema.properties || {});
  if (!entries.length) return null;
  const required = new Set(schema.required || []);
  return el("table", {},
    el("tr", {}, el("th", {}, "property"), el("th", {}, "schema")),
    entries.map(([name, property]) => el("tr", {},
      el("td", {}, code(name), required.has(name) ? el("span", {class: "required"}, " *") : null),
      el("td", {}, describe(property)))));
}

function parameterRows(parameters) {
  return parameters.map((reference) => {
    const p = resolve(reference);
    let style = null;
    if ([].concat(resolve(p.schema).type || []).includes("array") && p.in === "query") {
      style = p.explode === false ? " Comma-separated." : " Repeated, one value each.";
    }
    const example = p.example !== undefined ? [" e.g. ", code(json(p.example))] : null;
    return el("tr", {},
      el("td", {}, code(p.name), p.required ? el("span", {class: "required"}, " *") : null),
      el("td", {}, p.in),
      el("td", {}, describe(p.schema)),
      el("td", {}, p.description || "", style, example));
  });
}

function response(status, reference) {
  const r = resolve(reference);
  const out = [el("h4", {}, el("span", {class: "status"}, status), " ", r.description || "")];
  const headers = Object.entries(r.headers || {});
  if (headers.length) {
    out.push(el("table", {},
      el("tr", {}, el("th", {}, "header"), el("th", {}, "schema"), el("th", {}, "meaning")),
      headers.map(([name, header]) => {
        const h = resolve(header);
        return el("tr", {},
          el("td", {}, code(name), h.required ? el("span", {class: "required"}, " *") : null),
          el("td", {}, describe(h.schema)),
          el("td", {}, h.description || ""));
      })));
  }
  const content = Object.entries(r.content || {});
  if (content.length) {
    out.push(el("table", {},
      el("tr", {}, el("th", {}, "media type"), el("th", {}, "body")),
      content.map(([type, media]) => el("tr", {},
        el("td", {}, code(type)), el("td", {}, media.schema ? describe(media.schema) : "")))));
  }
  return out;
}

function operation(path, method, op, id) {
  const security = (op.security || []).flatMap((requirement) => Object.keys(requirement));
  const parameters = op.parameters || [];
  return el("section", {class: "operation", id: id},
    el("h3", {}, el("span", {class: "method"}, method), " ", code(path)),
    op.summary ? el("p", {}, el("strong", {}, op.summary)) : null,
    op.description ? el("p", {}, op.description) : null,
    el("p", {class: "muted"}, "operationId ", code(op.operationId || "-"),
      security.length ? ["; needs ", security.map((s, i) => [i ? ", " : "", code(s)])] : null),
    parameters.length ? [
      el("h4", {}, "Parameters ", el("span", {class: "muted"}, "(* required)")),
      el("table", {},
        el("tr", {}, el("th", {}, "name"), el("th", {}, "in"), el("th", {}, "schema"),
          el("th", {}, "meaning")),
        parameterRows(parameters)),
    ] : null,
    el("h4", {}, "Responses"),
    Object.entries(op.responses || {}).map(([status, r]) => response(status, r)));
}

function render() {
  const info = spec.info || {};
  const methods = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
  const operations = [];
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const method of methods) {
      if (item[method]) {
        const id = anchor("op", item[method].operationId || method + path);
        operations.push({path, method, op: item[method], id});
      }
    }
  }
  const schemes = Object.entries((spec.components || {}).securitySchemes || {});
  const schemas = Object.entries((spec.components || {}).schemas || {});
  main.replaceChildren(
    el("h1", {}, info.title || "API"),
    el("p", {class: "muted"}, "version ", code(info.version || "?"), ", OpenAPI ",
      code(spec.openapi || "?"), ", from ", el("a", {href: DOCUMENT}, "openapi.json")),
    info.description ? el("p", {}, info.description) : null,
    el("nav", {}, el("h2", {}, "Operations"), el("ul", {},
      operations.map((o) => el("li", {}, el("a", {href: "#" + o.id},
        el("span", {class: "method"}, o.method), " ", o.path))))),
    schemes.length ? [el("h2", {}, "Authentication"), el("ul", {}, schemes.map(([name, s]) =>
      el("li", {}, code(name), ": ", [s.type, s.scheme].filter(Boolean).join(" "),
        s.description ? " - " + s.description : "")))] : null,
    el("h2", {}, "Paths"),
    operations.map((o) => operation(o.path, o.method, o.op, o.id)),
    schemas.length ? el("h2", {}, "Schemas") : null,
    schemas.map(([name, schema]) => el("section", {id: anchor("schema", name)},
      el("h3", {}, code(name)), el("div", {}, describe(schema)))));
  document.title = (info.title || "API") + " reference";
  if (location.hash) {
    const target = document.getElementById(location.hash.slice(1));
    if (target) target.scrollIntoView();
  }
}

fetch(DOCUMENT, {headers: {Accept: "application/json"}})
  .then((answer) => {
    if (!answer.ok) throw new Error(answer.status + " " + answer.statusText);
    return answer.json();
  })
  .then((document_) => { spec = document_; render(); })
  .catch((error) => {
    main.replaceChildren(el("p", {class: "error"}, "Could not load " + DOCUMENT + ": " + error));
  });
"""

SCRIPT = SCRIPT.replace("__DOCUMENT__", json.dumps(DOCUMENT))


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>API reference</title>
<style>{STYLE}</style>
</head>
<body>
<main id="main">
<p>Loading <a href="{DOCUMENT}">{DOCUMENT}</a>&hellip;</p>
<noscript><p>This page renders the OpenAPI document with a script;
the document itself is <a href="{DOCUMENT}">{DOCUMENT}</a>.</p></noscript>
</main>
<script>{SCRIPT}</script>
</body>
</html>
"""

HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; connect-src 'self'; script-src {_hash(SCRIPT)}; "
        f"style-src {_hash(STYLE)}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE, headers=HEADERS)
