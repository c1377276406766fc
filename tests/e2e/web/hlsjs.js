// hls.js set-up run by tests/e2e/test_hlsjs_chromium.py and quoted in docs/players.md.
"use strict";

// snippet:start hlsjs
// HLS AES-128 through the gateway with hls.js. The playlist's key URIs point at the gateway,
// `${gateway}/v1/keys/<asset>/<key id>`. With a `token`, every key request to the gateway
// carries it as a Bearer header (hls.js loads keys with its XHR loader, so `xhrSetup` sees
// them); segments and playlists on the CDN never get it. Without one, the key URIs in the
// playlist must already carry `?token=<player token>`.
function startHlsJs(video, playlistUrl, { gateway, token = null }) {
  const keyRoute = `${gateway}/v1/keys/`;
  const hls = new Hls({
    xhrSetup(xhr, url) {
      xhr.open("GET", url, true); // open first: headers can only be set on an open request
      if (token && url.startsWith(keyRoute)) {
        xhr.setRequestHeader("Authorization", `Bearer ${token}`);
      }
    },
  });
  hls.loadSource(playlistUrl);
  hls.attachMedia(video);
  return hls;
}
// snippet:end
