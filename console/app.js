// The console shell: login, role-aware menu, hash routing, and one live event stream (SSE)
// shared by every view.

import {
  h, clear, api, get, post, session, ROLE_NAMES, toast, showError, setUnauthenticatedHandler, ApiError,
} from "./core.js";
import { liveView, pendingView, bus } from "./live.js";
import { searchView, passView, visitsView, registriesView } from "./records.js";
import { reportsView, inspectionView } from "./reports.js";
import { alarmsView, devicesView } from "./admin.js";

const ALL = ["guard", "supervisor", "env_manager", "admin", "inspector"];

// [hash, menu text, view, roles that see it in the menu]
const VIEWS = [
  ["live", "实时车道", liveView, ALL],
  ["pending", "待审批", pendingView, ["guard", "supervisor", "admin"]],
  ["alarms", "告警", alarmsView, ALL],
  ["search", "查询", searchView, ALL],
  ["visits", "台账", visitsView, ALL],
  ["registries", "登记", registriesView, ["supervisor", "env_manager", "admin", "inspector"]],
  ["reports", "报表", reportsView, ["supervisor", "env_manager", "admin", "inspector"]],
  ["inspection", "核查", inspectionView, ["env_manager", "admin", "inspector"]],
  ["devices", "设备", devicesView, ALL],
];

const main = () => document.getElementById("main");
let cleanup = null;
let stream = null;

function setStatus(ok, text) {
  const el = document.getElementById("conn");
  el.className = ok ? "conn conn-ok" : "conn conn-bad";
  el.textContent = text;
}

function openStream() {
  if (stream) stream.close();
  stream = new EventSource("/api/v1/lanes/stream");
  stream.onopen = () => {
    setStatus(true, "实时连接正常");
    bus.emit("reconnect", null);
  };
  stream.onerror = () => setStatus(false, "实时连接中断，正在重连…");
  for (const kind of ["lane", "alarm", "release"]) {
    stream.addEventListener(kind, (ev) => {
      try {
        bus.emit(kind, JSON.parse(ev.data));
      } catch (e) {
        console.warn("bad SSE data", kind, e);
      }
    });
  }
}

function closeStream() {
  if (stream) stream.close();
  stream = null;
}

function renderMenu() {
  const nav = document.getElementById("nav");
  const role = session.user ? session.user.role : null;
  clear(
    nav,
    role
      ? VIEWS.filter(([, , , roles]) => roles.includes(role)).map(([id, text]) =>
          h("a", { href: `#/${id}`, id: `nav-${id}`, testid: `nav-${id}`, class: "nav-item" }, text,
            id === "alarms" || id === "pending" ? h("span", { class: "badge", id: `badge-${id}` }) : null),
        )
      : [],
  );
  const who = document.getElementById("who");
  clear(
    who,
    session.user
      ? [
          h("span", { testid: "current-user" }, `${session.user.display_name || session.user.username}（${ROLE_NAMES[role] || role}）`),
          h("button", { class: "btn btn-small", id: "logout", testid: "logout", onclick: logout }, "退出"),
        ]
      : [],
  );
  document.getElementById("site-name").textContent =
    (session.site && session.site.enterprise && session.site.enterprise.name) || "环保门禁";
}

async function refreshBadges() {
  if (!session.user) return;
  try {
    const alarms = await get("/api/v1/alarms");
    const a = document.getElementById("badge-alarms");
    if (a) a.textContent = alarms.filter((x) => !x.acknowledged_by).length || "";
  } catch {
    /* the alarms view shows the error when opened */
  }
  const p = document.getElementById("badge-pending");
  if (p) {
    try {
      const rel = await get("/api/v1/releases?status=pending");
      p.textContent = rel.length || "";
    } catch {
      /* shown by the view */
    }
  }
}

function route() {
  if (cleanup) {
    try {
      cleanup();
    } catch (e) {
      console.warn(e);
    }
    cleanup = null;
  }
  const hash = location.hash.replace(/^#\/?/, "");
  const [name, ...rest] = hash.split("/");
  if (!session.user) {
    loginView();
    return;
  }
  const role = session.user.role;
  let v = VIEWS.find(([id]) => id === name);
  if (name === "pass") v = ["search", "通行详情", passView, ALL];
  if (!v) {
    location.hash = `#/${VIEWS.find(([, , , r]) => r.includes(role))[0]}`;
    return;
  }
  for (const a of document.querySelectorAll(".nav-item")) a.classList.toggle("active", a.id === `nav-${v[0]}`);
  document.title = `${v[1]} · 环保门禁`;
  const el = clear(main());
  el.setAttribute("data-view", name);
  try {
    cleanup = v[2](el, rest.map(decodeURIComponent)) || null;
  } catch (e) {
    showError(e);
  }
}

function loginView() {
  document.title = "登录 · 环保门禁";
  const err = h("div", { class: "form-error", role: "alert", id: "login-error", testid: "login-error" });
  const form = h(
    "form",
    { class: "login", id: "login-form", testid: "login-form" },
    h("h1", {}, "环保门禁控制台"),
    h("label", { class: "field" }, h("span", { class: "field-label" }, "用户名"),
      h("input", { name: "username", id: "login-username", testid: "login-username", autocomplete: "username", required: true })),
    h("label", { class: "field" }, h("span", { class: "field-label" }, "密码"),
      h("input", { name: "password", id: "login-password", testid: "login-password", type: "password", autocomplete: "current-password", required: true })),
    err,
    h("button", { type: "submit", class: "btn btn-primary btn-big", id: "login-submit", testid: "login-submit" }, "登录"),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const username = form.username.value.trim();
    const password = form.password.value;
    if (!username || !password) {
      err.textContent = "请输入用户名和密码";
      return;
    }
    try {
      const res = await post("/api/v1/login", { username, password });
      await started(res.user);
    } catch (e) {
      err.textContent = e instanceof ApiError ? e.message : String(e.message || e);
    }
  });
  clear(main(), form).setAttribute("data-view", "login");
  renderMenu();
  form.username.focus();
}

async function started(user) {
  session.user = user;
  try {
    session.site = await get("/api/v1/site");
  } catch (e) {
    session.site = null;
    showError(e);
  }
  renderMenu();
  openStream();
  refreshBadges();
  if (!location.hash || location.hash.startsWith("#/login")) location.hash = "#/live";
  route();
}

async function logout() {
  try {
    await post("/api/v1/logout");
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) showError(e);
  }
  ended();
}

function ended(message) {
  session.user = null;
  session.site = null;
  closeStream();
  // The next person at this PC should not see the last one's messages.
  document.getElementById("toasts").replaceChildren();
  if (message) toast(message, "error");
  location.hash = "#/login";
  route();
}

setUnauthenticatedHandler(() => {
  if (session.user) ended("登录已过期，请重新登录");
});

bus.on("alarm", refreshBadges);
bus.on("release", refreshBadges);
window.addEventListener("hashchange", route);

(async function boot() {
  try {
    const me = await api("GET", "/api/v1/me");
    await started(me && me.user ? me.user : me);
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) showError(e);
    session.user = null;
    route();
  }
})();
