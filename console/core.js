// Shared helpers: DOM building (text is always a text node, never parsed as HTML), the API
// client, session and roles, formatting in the site zone (GMT+8), dialogs and messages.

export function h(tag, attrs, ...children) {
  const svg = tag.startsWith("svg:");
  const el = svg
    ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.setAttribute("class", v);
    else if (k === "testid") el.setAttribute("data-testid", v);
    else if (k === "value" && !svg) el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

export function clear(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// ---- API ----

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const ERROR_TEXT = {
  unauthenticated: "未登录或登录已过期",
  forbidden: "无此权限",
  bad_request: "输入有误",
  invalid: "不允许的操作",
  not_found: "未找到",
  conflict: "状态冲突",
  throttled: "尝试次数过多，请稍后再试",
  not_implemented: "此功能尚未提供",
  internal: "服务器错误",
};

let onUnauthenticated = () => {};
export function setUnauthenticatedHandler(f) {
  onUnauthenticated = f;
}

export async function api(method, path, body) {
  const opt = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    opt.headers["Content-Type"] = "application/json";
    opt.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, opt);
  } catch (e) {
    throw new ApiError(0, "network", `无法连接网关（${e.message}）`);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!res.ok) {
    const err = data && data.error;
    const detail = err && err.message ? err.message : `${res.status} ${res.statusText || ""}`.trim();
    // The server's message names the field (in English); the prefix says what kind of refusal.
    const zh = ERROR_TEXT[(err && err.code) || ""] || (res.status >= 500 ? "服务器错误" : "请求失败");
    const msg = `${zh}：${detail}`;
    const e = new ApiError(res.status, (err && err.code) || "http_" + res.status, msg);
    if (res.status === 401 && !path.endsWith("/login")) onUnauthenticated(e);
    throw e;
  }
  return data;
}

export const get = (p) => api("GET", p);
export const post = (p, b) => api("POST", p, b === undefined ? {} : b);

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== "") u.set(k, v);
  }
  const s = u.toString();
  return s ? "?" + s : "";
}

// ---- session and roles ----

export const session = { user: null, site: null };

export const ROLE_NAMES = {
  guard: "门岗",
  supervisor: "值班主管",
  env_manager: "环保专员",
  admin: "管理员",
  inspector: "核查人员",
};

const RIGHTS = {
  release: ["guard", "supervisor", "admin"],
  correct: ["guard", "supervisor", "admin"],
  amend: ["supervisor", "env_manager", "admin"],
  approve: ["supervisor", "admin"],
  ack: ["supervisor", "env_manager", "admin"],
  registry: ["env_manager", "admin"],
  tonnage: ["env_manager", "admin"],
};

export function can(right) {
  const r = session.user && session.user.role;
  return !!r && (RIGHTS[right] || []).includes(r);
}

// ---- formatting ----

const pad = (n) => String(n).padStart(2, "0");

// The site is in GMT+8 whatever the PC's clock zone is.
export function fmtTime(iso, withSeconds = true) {
  if (!iso) return "";
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  const t = new Date(d.getTime() + 8 * 3600 * 1000);
  const s = `${t.getUTCFullYear()}-${pad(t.getUTCMonth() + 1)}-${pad(t.getUTCDate())} ${pad(
    t.getUTCHours(),
  )}:${pad(t.getUTCMinutes())}`;
  return withSeconds ? `${s}:${pad(t.getUTCSeconds())}` : s;
}

// Today in the site zone, `yyyy-MM-dd`, shifted by `days`.
export function siteDate(days = 0) {
  const t = new Date(Date.now() + 8 * 3600 * 1000 + days * 86400 * 1000);
  return `${t.getUTCFullYear()}-${pad(t.getUTCMonth() + 1)}-${pad(t.getUTCDate())}`;
}

// The lane's display name from the site (`东门 进厂`), or its id.
export function laneName(id) {
  for (const g of (session.site && session.site.gates) || []) {
    for (const l of g.lanes || []) if (l.id === id) return l.name || `${g.name} ${id}`;
  }
  return id || "";
}

export const COLORS = {
  blue: "蓝",
  yellow: "黄",
  white: "白",
  black: "黑",
  green: "绿",
  yellow_green: "黄绿",
  other: "其他",
};

export const STATES = {
  idle: "空闲",
  deciding: "判定中",
  opening: "抬杆中",
  refused: "禁止通行",
  released: "已放行",
  weighing: "称重中",
  awaiting_cargo: "等待货物申报",
  fault: "故障",
  power_loss: "断电",
};

export const BARRIER = { auto: "自动抬杆", manual: "手动抬杆", remote: "遥控抬杆" };
export const DECISION = { allow: "允许", deny: "拒绝" };
export const DIRECTION = { in: "进厂", out: "出厂" };
export const RELEASE_STATUS = {
  pending: "待审批",
  approved: "已批准",
  rejected: "已驳回",
  executed: "已执行",
  expired: "已过期",
};

export function plateBadge(plate, color, testid) {
  const c = color || "other";
  return h(
    "span",
    { class: `plate plate-${c}`, title: COLORS[c] || c, testid },
    plate || "无牌",
  );
}

export function decisionChip(decision) {
  if (!decision) return h("span", { class: "chip" }, "—");
  return h("span", { class: `chip chip-${decision}` }, DECISION[decision] || decision);
}

// ---- messages and dialogs ----

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: `toast toast-${kind}`, role: "alert", testid: `toast-${kind}` }, message);
  box.appendChild(el);
  setTimeout(() => el.remove(), kind === "error" ? 10000 : 4000);
}

export function showError(e) {
  toast(e instanceof ApiError ? e.message : `出错：${e && e.message ? e.message : e}`, "error");
}

// A modal form. `build(form)` fills it; `submit(form)` returns a promise; an error keeps the
// dialog open with the server's message shown inside it.
export function dialog({ title, testid, build, submit, submitText = "提交" }) {
  return new Promise((resolve) => {
    const err = h("div", { class: "form-error", role: "alert", testid: "dialog-error" });
    const form = h("form", { class: "dialog-form", testid: testid, novalidate: true });
    const close = (v) => {
      back.remove();
      document.removeEventListener("keydown", esc);
      resolve(v);
    };
    const esc = (ev) => {
      if (ev.key === "Escape") close(null);
    };
    const ok = h("button", { type: "submit", class: "btn btn-primary", testid: "dialog-submit" }, submitText);
    form.append(
      h("h2", {}, title),
      ...[].concat(build(form) || []),
      err,
      h(
        "div",
        { class: "dialog-buttons" },
        h("button", { type: "button", class: "btn", testid: "dialog-cancel", onclick: () => close(null) }, "取消"),
        ok,
      ),
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      ok.disabled = true;
      try {
        close(await submit(form));
      } catch (e) {
        err.textContent = e instanceof ApiError ? e.message : String(e.message || e);
      } finally {
        ok.disabled = false;
      }
    });
    const back = h("div", { class: "dialog-back" }, h("div", { class: "dialog", role: "dialog" }, form));
    document.body.appendChild(back);
    document.addEventListener("keydown", esc);
    const first = form.querySelector("input,select,textarea");
    if (first) first.focus();
  });
}

export function field(label, input, hint) {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), input, hint ? h("small", {}, hint) : null);
}

export function select(name, options, value, attrs = {}) {
  return h(
    "select",
    { name, ...attrs },
    options.map(([v, t]) => h("option", { value: v, selected: String(v) === String(value ?? "") }, t)),
  );
}

export function colorSelect(name, value, attrs = {}, withEmpty = false) {
  const opts = Object.entries(COLORS);
  return select(name, withEmpty ? [["", "全部"], ...opts] : opts, value || (withEmpty ? "" : "blue"), attrs);
}

export function input(name, attrs = {}) {
  return h("input", { name, type: "text", ...attrs });
}

export function formValues(form) {
  const o = {};
  for (const [k, v] of new FormData(form).entries()) o[k] = typeof v === "string" ? v.trim() : v;
  return o;
}

// ---- tables and paging ----

// columns: [[title, row => cell]]
export function table(columns, rows, opts = {}) {
  return h(
    "table",
    { class: "grid", testid: opts.testid },
    h("thead", {}, h("tr", {}, columns.map(([t]) => h("th", {}, t)))),
    h(
      "tbody",
      {},
      rows.length === 0
        ? h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, opts.empty || "没有记录"))
        : rows.map((r) =>
            h(
              "tr",
              { class: opts.rowClass ? opts.rowClass(r) : null, onclick: opts.onRow ? () => opts.onRow(r) : null },
              columns.map(([, f]) => h("td", {}, f(r))),
            ),
          ),
    ),
  );
}

export function pager(total, page, perPage, go) {
  const pages = Math.max(1, Math.ceil((total || 0) / perPage));
  return h(
    "div",
    { class: "pager", testid: "pager" },
    h("button", { class: "btn", disabled: page <= 1, onclick: () => go(page - 1), testid: "page-prev" }, "上一页"),
    h("span", {}, `第 ${page} / ${pages} 页，共 ${total ?? 0} 条`),
    h("button", { class: "btn", disabled: page >= pages, onclick: () => go(page + 1), testid: "page-next" }, "下一页"),
  );
}

export function photo(url, alt, testid) {
  if (!url) return h("div", { class: "photo photo-none" }, "无照片");
  return h(
    "a",
    { href: url, target: "_blank", rel: "noopener", class: "photo-link" },
    h("img", { class: "photo", src: url, alt: alt || "照片", loading: "lazy", testid }),
  );
}

export function section(title, ...children) {
  return h("section", { class: "panel" }, h("h2", {}, title), ...children);
}

export async function loadInto(el, f) {
  clear(el, h("div", { class: "loading" }, "加载中…"));
  try {
    await f(el);
  } catch (e) {
    clear(el, h("div", { class: "form-error", role: "alert", testid: "load-error" }, e.message || String(e)));
    if (!(e instanceof ApiError && e.status === 401)) showError(e);
  }
}
