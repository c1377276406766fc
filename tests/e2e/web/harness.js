// Test harness of player.html: loads the player's libraries and its snippet, runs the snippet
// with the query's parameters and exposes the state play.mjs reads as window.e2e
// ({state, error, errorData, licenseRequests}). Not part of any snippet.
"use strict";

const PLAYERS = {
  hlsjs: { library: "hls.min.js", snippet: "hlsjs.js" },
  dashjs: { library: "dash.all.min.js", snippet: "dashjs.js" },
  shaka: { library: "/shaka/shaka-player.compiled.js", snippet: "shaka.js" },
  videojs: {
    library: ["video.min.js", "videojs-contrib-eme.min.js"],
    styles: "video-js.min.css",
    snippet: "videojs.js",
  },
};
const params = new URLSearchParams(location.search);
const video = document.getElementById("video");
const status = document.getElementById("status");
const gateway = params.get("gateway");
const rate = Number(params.get("rate") || "1");

// The gateway requests the page made: license posts and key fetches (Resource Timing).
function gatewayRequests(route) {
  return performance
    .getEntriesByType("resource")
    .filter((entry) => entry.name.startsWith(`${gateway}${route}`)).length;
}

window.e2e = { state: "loading", error: null, errorData: null };
Object.defineProperty(window.e2e, "licenseRequests", {
  get: () => gatewayRequests("/v1/license/") + gatewayRequests("/v1/keys/"),
  enumerable: true,
});

function render() {
  const e = window.e2e;
  const quality = video.getVideoPlaybackQuality();
  status.textContent =
    e.error !== null
      ? `${params.get("player")} error ${e.error}`
      : `${e.state} t=${video.currentTime.toFixed(2)} frames=${quality.totalVideoFrames}`;
}

function fail(code, data) {
  if (window.e2e.error === null) {
    window.e2e.error = code === undefined || code === null ? "unknown" : code;
    window.e2e.errorData = data ? JSON.stringify(data).slice(0, 300) : null;
    window.e2e.state = "error";
  }
  render();
}

function load(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`cannot load ${src}`));
    document.head.appendChild(script);
  });
}

// Each player reports its fatal errors its own way: keep the first one's code.
function watch(name, player) {
  if (name === "hlsjs") {
    player.on(Hls.Events.ERROR, (_event, data) => {
      if (data.fatal) fail(data.details, { type: data.type, status: data.response?.code });
    });
  } else if (name === "videojs") {
    // contrib-eme reports license failures as player errors (MEDIA_ERR_ENCRYPTED, code 5).
    player.on("error", () => {
      const error = player.error();
      fail(error?.code, { message: error?.message, metadata: error?.metadata });
    });
  } else if (name === "dashjs") {
    player.on(dashjs.MediaPlayer.events.ERROR, (event) =>
      fail(event.error?.code, { message: event.error?.message }),
    );
  } else {
    player.addEventListener("error", (event) => fail(event.detail.code, event.detail.data));
  }
}

async function main() {
  const name = params.get("player");
  const spec = PLAYERS[name];
  if (!spec) throw new Error(`unknown player ${name}`);
  if (spec.styles) {
    const link = document.createElement("link");
    link.rel = "stylesheet";
    link.href = spec.styles;
    document.head.appendChild(link);
  }
  for (const library of [].concat(spec.library)) await load(library);
  await load(spec.snippet);
  const options = { gateway, assetId: params.get("asset"), token: params.get("token") };
  video.addEventListener("playing", () => {
    video.playbackRate = rate;
    if (window.e2e.error === null) window.e2e.state = "playing";
  });
  video.addEventListener("timeupdate", render);
  const src = params.get("src");
  if (name === "hlsjs") watch(name, startHlsJs(video, src, options));
  else if (name === "dashjs") watch(name, startDashJs(video, src, options));
  else if (name === "videojs") {
    video.classList.add("video-js"); // what Video.js's stylesheet styles (the page's markup)
    watch(name, startVideoJs(video, src, options));
  }
  else {
    // Shaka's load() rejects on a fatal error; the error event says the same.
    const player = await startShaka(video, src, options).catch((error) => fail(error.code));
    if (player) watch(name, player);
  }
}

window.e2eRender = render;
main().catch((error) => fail(String(error)));
setInterval(render, 250);
