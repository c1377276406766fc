// Video.js set-up run by tests/e2e/test_videojs_chromium.py and quoted in docs/players.md.
"use strict";

// snippet:start videojs
// DASH through the gateway with Video.js and videojs-contrib-eme: per key system the gateway's
// license URL and the player token as a license request header. The plugin is initialised
// before the source is set; it uses the first key system the browser supports.
function startVideoJs(video, manifestUrl, { gateway, assetId, token }) {
  const player = videojs(video);
  player.eme();
  const auth = { Authorization: `Bearer ${token}` };
  const license = (drm) => `${gateway}/v1/license/${drm}/${encodeURIComponent(assetId)}`;
  player.src({
    src: manifestUrl,
    type: "application/dash+xml", // or application/x-mpegURL for FairPlay HLS
    keySystems: {
      "com.widevine.alpha": { url: license("widevine"), licenseHeaders: auth },
      "com.microsoft.playready": { url: license("playready"), licenseHeaders: auth },
      "org.w3.clearkey": { url: license("clearkey"), licenseHeaders: auth },
      "com.apple.fps.1_0": {
        certificateUri: `${gateway}/v1/certificate/fairplay`,
        licenseUri: license("fairplay"),
        licenseHeaders: auth,
      },
    },
  });
  return player;
}
// snippet:end
