// dash.js set-up run by tests/e2e/test_dashjs_chromium.py and quoted in docs/players.md.
"use strict";

// snippet:start dashjs
// DASH through the gateway with dash.js: one license URL per DRM system, each license request
// carrying the player token as a Bearer header.
function startDashJs(video, manifestUrl, { gateway, assetId, token }) {
  const license = (drm) => ({
    serverURL: `${gateway}/v1/license/${drm}/${encodeURIComponent(assetId)}`,
    httpRequestHeaders: { Authorization: `Bearer ${token}` },
    withCredentials: false, // dash.js sends cookies by default; the token is the credential
  });
  const player = dashjs.MediaPlayer().create();
  player.setProtectionData({
    "com.widevine.alpha": license("widevine"),
    "com.microsoft.playready": license("playready"),
    "org.w3.clearkey": license("clearkey"),
  });
  player.initialize(video, manifestUrl, true);
  return player;
}
// snippet:end
