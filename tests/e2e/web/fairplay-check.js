// Runs each case of the JSON list at ?cases= through a Shaka Player configured by the
// fairplay.js snippet: the certificate and license requests are built and sent the way
// Shaka's DRM engine (lib/drm/drm_engine.js, sendLicenseRequest_) builds and sends them, so
// the snippet's request filters (the FairPlay helper, the token) and its response filter
// (commonFairPlayResponse) all run. A case: {name, gateway, assetId, token, helper, spc}
// (helper: a shaka.drm.FairPlay request helper's name or null; spc: base64). Each result
// holds what went on the wire at each attempt and the CKC bytes Shaka would hand to the CDM, in base64.
"use strict";

const toBase64 = (data) => btoa(String.fromCharCode(...new Uint8Array(data)));
const fromBase64 = (text) => Uint8Array.from(atob(text), (c) => c.charCodeAt(0));

async function runCase(spec) {
  const player = new shaka.Player();
  const requestHelper = spec.helper ? shaka.drm.FairPlay[spec.helper] : null;
  if (spec.helper && typeof requestHelper !== "function") {
    return { name: spec.name, missingHelper: spec.helper };
  }
  configureShakaFairPlay(player, { ...spec, requestHelper });
  // Retries still happen, only without the default 1 s back-off (the check's own setting).
  player.configure({ drm: { retryParameters: { baseDelay: 20, fuzzFactor: 0 } } });
  const net = player.getNetworkingEngine();
  const sent = [];
  // Registered last, so it sees each attempt as it leaves, after the snippet's filters.
  net.registerRequestFilter((type, request) => {
    if (type !== shaka.net.NetworkingEngine.RequestType.LICENSE) return;
    const contentType = request.headers["Content-Type"] ?? null;
    sent.push({ attempt: request.attempt, contentType, body: toBase64(request.body) });
  });
  const drm = player.getConfiguration().drm;
  const types = shaka.net.NetworkingEngine.RequestType;
  const make = (uri) => shaka.net.NetworkingEngine.makeRequest([uri], drm.retryParameters);
  const drmInfo = {
    keySystem: "com.apple.fps",
    licenseServerUri: drm.servers["com.apple.fps"],
    serverCertificateUri: drm.advanced["com.apple.fps"].serverCertificateUri,
  };
  const result = { name: spec.name, sent };
  try {
    const certificate = await net.request(types.SERVER_CERTIFICATE, make(drmInfo.serverCertificateUri)).promise;
    result.certificate = toBase64(certificate.data);
    const request = make(drmInfo.licenseServerUri);
    request.body = fromBase64(spec.spc).buffer;
    request.method = "POST";
    request.licenseRequestType = "license-request";
    request.sessionId = `e2e-${spec.name}`;
    request.drmInfo = drmInfo;
    const response = await net.request(types.LICENSE, request).promise;
    result.answerType = response.headers["content-type"] ?? null;
    result.ckc = toBase64(response.data);
  } catch (error) {
    // BAD_HTTP_STATUS data: [uri, status, response text, headers, ...]
    const [, status = null, text = null] = error.data || [];
    result.error = { code: error.code, status, text };
  } finally {
    await player.destroy();
  }
  return result;
}

async function main() {
  const params = new URLSearchParams(location.search);
  const cases = await (await fetch(params.get("cases"))).json();
  const results = [];
  for (const spec of cases) results.push(await runCase(spec));
  document.getElementById("status").textContent = `${results.length} cases run`;
  const helpers = Object.getOwnPropertyNames(shaka.drm.FairPlay).filter((name) =>
    name.endsWith("FairPlayRequest"),
  );
  window.e2eResult = { version: shaka.Player.version, helpers, results };
}

main().catch((error) => {
  window.e2eResult = { error: String(error && error.stack ? error.stack : error) };
});
