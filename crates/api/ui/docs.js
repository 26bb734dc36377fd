// A small reader for the service's OpenAPI document (/openapi.json):
// every operation by tag, with its parameters, body and answers, and the
// schemas. Ours, served from the binary: nothing is fetched from elsewhere.
"use strict";

const root = document.getElementById("docs");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function typeOf(schema) {
  if (!schema) return "";
  if (schema.$ref) return schema.$ref.split("/").pop();
  if (schema.type === "array") return typeOf(schema.items) + "[]";
  let t = Array.isArray(schema.type) ? schema.type.join(" | ") : (schema.type || "");
  if (schema.enum) t += " (" + schema.enum.join(", ") + ")";
  if (schema.format) t += " " + schema.format;
  if (schema.minimum !== undefined || schema.maximum !== undefined) t += " [" + (schema.minimum ?? "") + ".." + (schema.maximum ?? "") + "]";
  return t;
}

function operation(method, path, op) {
  const params = (op.parameters || []).map(p =>
    el("tr", {}, el("td", {}, el("code", {}, p.name)), el("td", {}, p.in), el("td", {}, typeOf(p.schema)),
      el("td", {}, p.required ? "required" : ""), el("td", {}, p.description || "")));
  const body = op.requestBody && Object.entries(op.requestBody.content || {}).map(([type, c]) =>
    el("li", {}, el("code", {}, type), " ", typeOf(c.schema)));
  const answers = Object.entries(op.responses || {}).map(([status, r]) =>
    el("li", {}, el("strong", {}, status), " ", r.description || "",
      ...Object.entries(r.content || {}).map(([type, c]) => el("span", { class: "muted" }, " — ", type, " ", typeOf(c.schema)))));
  return el("details", { class: "card", id: op.operationId || "" },
    el("summary", {}, el("strong", {}, method.toUpperCase()), " ", el("code", {}, path), " ", el("span", { class: "muted" }, op.summary || "")),
    el("p", {}, op.description || ""),
    params.length ? el("table", {}, el("tr", {}, ...["name", "in", "type", "", ""].map(h => el("th", {}, h))), ...params) : null,
    body ? el("div", {}, el("h3", {}, "Body"), el("ul", {}, ...body)) : null,
    el("h3", {}, "Answers"), el("ul", {}, ...answers));
}

fetch("./openapi.json").then(r => r.json()).then(doc => {
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of ["get", "post", "put", "delete"]) {
      const op = item[method];
      if (!op) continue;
      const tag = (op.tags && op.tags[0]) || "other";
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push(operation(method, path, op));
    }
  }
  const schemas = Object.entries((doc.components || {}).schemas || {}).map(([name, s]) =>
    el("details", { class: "card", id: "schema-" + name }, el("summary", {}, el("code", {}, name)),
      el("p", {}, s.description || ""),
      el("ul", {}, ...Object.entries(s.properties || {}).map(([p, ps]) =>
        el("li", {}, el("code", {}, p), " ", typeOf(ps), (s.required || []).includes(p) ? " (required)" : "", " ", el("span", { class: "muted" }, ps.description || ""))))));
  root.replaceChildren(
    el("h1", {}, doc.info.title, " ", el("span", { class: "muted" }, doc.info.version)),
    el("p", {}, doc.info.description || ""),
    ...[...byTag.entries()].flatMap(([tag, ops]) => [el("h2", {}, tag), ...ops]),
    el("h2", {}, "Schemas"), ...schemas);
}).catch(e => { root.textContent = "Could not load /openapi.json: " + e; });
