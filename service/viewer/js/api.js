// The service's HTTP API, as the viewer uses it. Same origin only (the page's CSP allows
// nothing else). The API key lives in sessionStorage: this tab only (never a cookie or
// localStorage, never in a URL); the browser drops it with the tab's session.

const KEY = "sharpcxr.apiKey";

export class ApiError extends Error {
  /** The service's own error body ({error: {code, message, request_id}}), shown as is. */
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = apiKey();
  if (key) h["X-API-Key"] = key;
  return h;
}

async function failure(response) {
  let code = `http_${response.status}`;
  let message = response.statusText || "request failed";
  let requestId = response.headers.get("x-request-id") || "";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      requestId = body.error.request_id || requestId;
    }
  } catch (_) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message, requestId);
}

async function call(path, init = {}) {
  let response;
  try {
    response = await fetch(path, { ...init, headers: headers(init.headers), cache: "no-store" });
  } catch (err) {
    throw new ApiError(0, "unreachable", "the service did not answer (is it running?)", "");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

const DICOM = { "Content-Type": "application/dicom" };

/** POST /v1/predict: the answer with the mask (PNG) and the bare saliency map. */
export async function predict(bytes, resolution) {
  const q = new URLSearchParams({ mask_format: "png", saliency_map: "true" });
  if (resolution) q.set("resolution", String(resolution));
  const r = await call(`/v1/predict?${q}`, { method: "POST", body: bytes, headers: DICOM });
  return r.json();
}

/** POST /v1/compare: one answer per resolution. */
export async function compare(bytes, resolutions) {
  const q = new URLSearchParams({ mask_format: "png", saliency_map: "true" });
  if (resolutions && resolutions.length) q.set("resolutions", resolutions.join(","));
  const r = await call(`/v1/compare?${q}`, { method: "POST", body: bytes, headers: DICOM });
  return (await r.json()).results;
}

/**
 * The display chain's pixels: {rows, columns, spacing: [row, col] mm | null, voi, codes}.
 * codes: Uint16Array rows*columns, row-major, value/65535 = display value (higher = brighter).
 */
async function displayFrom(response) {
  const rows = Number(response.headers.get("x-image-rows"));
  const columns = Number(response.headers.get("x-image-columns"));
  const spacingText = response.headers.get("x-pixel-spacing-mm");
  const spacing = spacingText ? spacingText.split(",").map(Number) : null;
  const buffer = await response.arrayBuffer();
  if (buffer.byteLength !== rows * columns * 2) {
    throw new ApiError(0, "bad_display", "the display pixels did not arrive whole; reload", "");
  }
  // The service sends little-endian uint16; every browser platform is little-endian.
  return { rows, columns, spacing, voi: response.headers.get("x-voi") || "", codes: new Uint16Array(buffer) };
}

export async function displayOf(bytes) {
  return displayFrom(await call("/v1/display", { method: "POST", body: bytes, headers: DICOM }));
}

export async function jobDisplay(jobId) {
  return displayFrom(await call(`/v1/jobs/${encodeURIComponent(jobId)}/display`));
}

export async function models() {
  return (await call("/v1/models")).json();
}

export async function jobs(limit = 50) {
  return (await (await call(`/v1/jobs?limit=${limit}`)).json()).jobs;
}

export async function job(jobId) {
  return (await call(`/v1/jobs/${encodeURIComponent(jobId)}`)).json();
}
