// The API's documentation, drawn from FastAPI's OpenAPI schema (/openapi.json) with no external script.
"use strict";

(async () => {
  const { api, el } = AL;
  const box = document.getElementById("api");
  let spec;
  try {
    spec = await api("/openapi.json");
  } catch (e) {
    box.replaceChildren(el("p", { class: "notice refused", text: `cannot read /openapi.json: ${e.message}` }));
    return;
  }
  const schemas = (spec.components || {}).schemas || {};
  const deref = (s) => (s && s.$ref ? schemas[s.$ref.split("/").pop()] || {} : s || {});
  const typeOf = (s) => {
    s = deref(s);
    if (s.anyOf) return s.anyOf.map(typeOf).join(" | ");
    if (s.type === "array") return `${typeOf(s.items)}[]`;
    if (s.type === "object" && s.title) return s.title;
    return s.type || s.title || "object";
  };
  const fields = (s) => {
    s = deref(s);
    const props = s.properties || {};
    const req = new Set(s.required || []);
    if (!Object.keys(props).length) return el("span", { class: "muted", text: typeOf(s) });
    return el("table", { class: "fields" }, ...Object.entries(props).map(([k, v]) =>
      el("tr", {}, el("td", {}, el("code", { text: k }), req.has(k) ? "" : " (optional)"),
        el("td", { text: typeOf(v) }), el("td", { text: deref(v).description || v.description || "" }))));
  };
  const items = [];
  for (const [path, ops] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(ops)) {
      const params = (op.parameters || []).map((p) =>
        el("li", {}, el("code", { text: p.name }), ` (${p.in}${p.required ? ", required" : ""}): ${typeOf(p.schema)}`, p.description ? ` - ${p.description}` : ""));
      const body = op.requestBody ? deref(((op.requestBody.content || {})["application/json"] || {}).schema) : null;
      const ok = ((op.responses || {})["200"] || {}).content || {};
      const out = ok["application/json"] ? deref(ok["application/json"].schema) : null;
      items.push(el("section", { class: "endpoint" },
        el("h3", {}, el("span", { class: `method ${method}`, text: method.toUpperCase() }), " ", el("code", { text: path })),
        el("p", { text: op.summary || "" }),
        params.length ? el("div", {}, el("strong", { text: "parameters" }), el("ul", {}, ...params)) : "",
        body ? el("div", {}, el("strong", { text: "body (JSON)" }), fields(body)) : "",
        out && out.properties ? el("div", {}, el("strong", { text: "answer" }), fields(out)) : "",
        ok["image/png"] ? el("p", {}, el("strong", { text: "answer: " }), "image/png") : ""));
    }
  }
  box.replaceChildren(el("p", { class: "muted", text: `${spec.info.title} ${spec.info.version}` }), ...items);
})();
