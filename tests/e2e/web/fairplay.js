// Shaka Player's FairPlay set-up run by tests/e2e/test_fairplay_helpers.py and quoted in
// docs/players.md.
"use strict";

// snippet:start shaka-fairplay
// FairPlay through the gateway with Shaka Player (Safari). The gateway reads every body shape
// Shaka's helpers build, so any of shaka.drm.FairPlay's request helpers may be used (or none:
// the raw SPC is fine too); commonFairPlayResponse then unwraps what the gateway answers.
function configureShakaFairPlay(player, { gateway, assetId, token, requestHelper }) {
  player.configure({
    drm: {
      servers: {
        "com.apple.fps": `${gateway}/v1/license/fairplay/${encodeURIComponent(assetId)}`,
      },
      advanced: {
        "com.apple.fps": { serverCertificateUri: `${gateway}/v1/certificate/fairplay` },
      },
    },
  });
  const net = player.getNetworkingEngine();
  if (requestHelper) net.registerRequestFilter(requestHelper); // e.g. verimatrixFairPlayRequest
  net.registerRequestFilter((type, request) => {
    if (type === shaka.net.NetworkingEngine.RequestType.LICENSE) {
      request.headers["Authorization"] = `Bearer ${token}`;
    }
  });
  net.registerResponseFilter(shaka.drm.FairPlay.commonFairPlayResponse);
}
// snippet:end
