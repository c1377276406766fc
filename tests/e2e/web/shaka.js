// Shaka Player set-up run by tests/e2e/test_dashjs_chromium.py and quoted in docs/players.md.
"use strict";

// snippet:start shaka
// DASH through the gateway with Shaka Player: one license URL per DRM system, and the player
// token added to every license request (and only to those) by a request filter.
async function startShaka(video, manifestUrl, { gateway, assetId, token }) {
  const player = new shaka.Player();
  await player.attach(video);
  const license = (drm) => `${gateway}/v1/license/${drm}/${encodeURIComponent(assetId)}`;
  player.configure({
    drm: {
      servers: {
        "com.widevine.alpha": license("widevine"),
        "com.microsoft.playready": license("playready"),
        "org.w3.clearkey": license("clearkey"),
      },
    },
  });
  player.getNetworkingEngine().registerRequestFilter((type, request) => {
    if (type === shaka.net.NetworkingEngine.RequestType.LICENSE) {
      request.headers["Authorization"] = `Bearer ${token}`;
    }
  });
  await player.load(manifestUrl);
  return player;
}
// snippet:end
