#!/usr/bin/env node
// Play a jetcode output directory in headless Chromium the way browsers do:
// hls/master.m3u8 through hls.js (MSE), every *.mp4 in a plain <video>.
//
//   node tests/browser/play.mjs <out_dir> [--chromium PATH] [--debug] [--hls-js FILE]
//
// --debug adds hls.js's own log to each HLS pass (`logs`); --hls-js serves
// another hls.js build (e.g. an instrumented copy) instead of the pinned one.
//
// Serves <out_dir> on a random loopback port (Range requests, HLS/TS/MP4
// MIME types), starts Chromium with a fresh profile, runs three passes and
// prints ONE JSON object to stdout:
//   linear  master.m3u8 start to end, no seeks, every main fragment from the
//           next level (hls.loadLevel), decoded frame count, sizes shown
//   seeks   nextLevel/currentLevel switches and seeks forward, back, to end
//   mp4     each MP4 in a plain <video> to `ended`
// plus every hls.js ERROR event (fatal or not) of each pass, HTTP requests
// that failed, and codec support. Judging is left to the caller
// (tests/browser.rs). Exit 0 when the passes ran (whatever they found),
// 2 on a harness failure, 3 when the overall deadline
// (media duration x 3 + 60 s) passed; Chromium is killed in every case.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import puppeteer from 'puppeteer-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));

function usage(msg) {
  if (msg) process.stderr.write(`play.mjs: ${msg}\n`);
  process.stderr.write('usage: node play.mjs <out_dir> [--chromium PATH] [--debug] [--hls-js FILE]\n');
  process.exit(2);
}

const args = process.argv.slice(2);
let outDir = null;
let chromiumBin = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
let debug = false;
let hlsJs = path.join(HERE, 'node_modules', 'hls.js', 'dist', 'hls.js');
for (let i = 0; i < args.length; i++) {
  const a = args[i];
  if (a === '--chromium') chromiumBin = args[++i] ?? usage('--chromium needs a path');
  else if (a === '--debug') debug = true;
  else if (a === '--hls-js') hlsJs = path.resolve(args[++i] ?? usage('--hls-js needs a file'));
  else if (a.startsWith('-')) usage(`unknown option ${a}`);
  else if (outDir === null) outDir = path.resolve(a);
  else usage(`unexpected argument ${a}`);
}
if (!outDir) usage('no output directory');
const master = path.join(outDir, 'hls', 'master.m3u8');
if (!fs.existsSync(master)) usage(`${master} does not exist`);
const mp4s = fs.readdirSync(outDir).filter((f) => f.endsWith('.mp4')).sort();

/** Media duration: the EXTINF sum of the first variant's playlist. */
function hlsDuration() {
  const text = fs.readFileSync(master, 'utf8');
  const uri = text.split('\n').map((l) => l.trim()).find((l) => l && !l.startsWith('#'));
  if (!uri) throw new Error('master playlist has no variant');
  const media = fs.readFileSync(path.join(path.dirname(master), uri), 'utf8');
  return [...media.matchAll(/^#EXTINF:([0-9.]+)/gm)].reduce((s, m) => s + Number(m[1]), 0);
}
const duration = hlsDuration();
const deadlineS = Math.ceil(duration * 3 + 60);
const started = Date.now();
const left = () => deadlineS * 1000 - (Date.now() - started);

// ---------------------------------------------------------------- cleanup
let browserProc = null;
let server = null;
let profile = null;
function cleanup() {
  if (browserProc && browserProc.exitCode === null && browserProc.signalCode === null) {
    try {
      process.kill(-browserProc.pid, 'SIGKILL'); // its own process group
    } catch {
      try {
        browserProc.kill('SIGKILL');
      } catch {}
    }
  }
  if (server) server.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true, maxRetries: 3 });
}
function finish(code, result) {
  if (result) process.stdout.write(JSON.stringify(result, null, 1) + '\n');
  cleanup();
  process.exit(code);
}
const overall = setTimeout(() => {
  process.stderr.write(`play.mjs: overall deadline of ${deadlineS} s passed\n`);
  finish(3, { failure: `overall deadline of ${deadlineS} s passed`, partial: result });
}, deadlineS * 1000);
overall.unref();
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => finish(130));

/** `p`, or a rejection naming `what` after `ms`. */
function within(p, ms, what) {
  let t;
  return Promise.race([
    p,
    new Promise((_, rej) => {
      t = setTimeout(() => rej(new Error(`timed out after ${Math.round(ms)} ms: ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(t));
}

// ---------------------------------------------------------------- HTTP
const MIME = {
  '.m3u8': 'application/vnd.apple.mpegurl',
  '.ts': 'video/mp2t',
  '.mp4': 'video/mp4',
  '.m4s': 'video/iso.segment',
  '.aac': 'audio/aac',
  '.json': 'application/json',
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
};
const HARNESS = {
  '/__harness/index.html': path.join(HERE, 'page.html'),
  '/__harness/hls.js': hlsJs,
};
const http_log = { requests: 0, ranged: 0, failed: [] };

function serve(req, res) {
  http_log.requests++;
  const fail = (code, why) => {
    http_log.failed.push({ url: req.url, code, why });
    res.writeHead(code, { 'Content-Type': 'text/plain' });
    res.end(why);
  };
  if (req.method !== 'GET' && req.method !== 'HEAD') return fail(405, 'method');
  let rel;
  try {
    rel = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  } catch {
    return fail(400, 'bad url');
  }
  if (rel === '/favicon.ico') {
    res.writeHead(204);
    return res.end();
  }
  let file = HARNESS[rel];
  if (!file) {
    file = path.join(outDir, path.normalize(rel));
    if (!file.startsWith(outDir + path.sep)) return fail(403, 'outside the output');
  }
  let st;
  try {
    st = fs.statSync(file);
  } catch {
    return fail(404, 'not found');
  }
  if (!st.isFile()) return fail(404, 'not a file');
  const headers = {
    'Content-Type': MIME[path.extname(file)] || 'application/octet-stream',
    'Accept-Ranges': 'bytes',
    'Cache-Control': 'no-store',
  };
  let start = 0;
  let end = st.size - 1;
  let status = 200;
  const range = req.headers.range;
  if (range) {
    const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
    if (!m || (m[1] === '' && m[2] === '')) return fail(416, `bad range ${range}`);
    if (m[1] === '') {
      start = Math.max(0, st.size - Number(m[2]));
    } else {
      start = Number(m[1]);
      if (m[2] !== '') end = Math.min(end, Number(m[2]));
    }
    if (start > end || start >= st.size) {
      http_log.failed.push({ url: req.url, code: 416, why: range });
      res.writeHead(416, { 'Content-Range': `bytes */${st.size}` });
      return res.end();
    }
    status = 206;
    http_log.ranged++;
    headers['Content-Range'] = `bytes ${start}-${end}/${st.size}`;
  }
  headers['Content-Length'] = String(end - start + 1);
  res.writeHead(status, headers);
  if (req.method === 'HEAD') return res.end();
  const stream = fs.createReadStream(file, { start, end });
  stream.on('error', () => res.destroy());
  stream.pipe(res);
}

// ---------------------------------------------------------------- Chromium
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--no-default-browser-check',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-extensions',
  '--disable-dev-shm-usage',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-background-media-suspend',
  '--disable-renderer-backgrounding',
  '--disable-background-timer-throttling',
  '--remote-debugging-port=0',
];

/** Start Chromium and resolve with its DevTools WebSocket URL. */
function launch() {
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'jetcode-chromium-'));
  browserProc = spawn(chromiumBin, [...FLAGS, `--user-data-dir=${profile}`, 'about:blank'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true, // own process group: killed as a whole
  });
  let stderr = '';
  return within(
    new Promise((resolve, reject) => {
      browserProc.on('error', reject);
      browserProc.on('exit', (code, sig) =>
        reject(new Error(`chromium exited (${code ?? sig}) before DevTools was up: ${stderr.slice(-2000)}`)),
      );
      browserProc.stderr.setEncoding('utf8');
      browserProc.stderr.on('data', (d) => {
        stderr += d;
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(stderr);
        if (m) resolve(m[1]);
        if (stderr.length > 1 << 20) stderr = stderr.slice(-1 << 16);
      });
    }),
    30000,
    'chromium DevTools endpoint',
  );
}

// ---------------------------------------------------------------- run
const result = {
  out_dir: outDir,
  media_duration_s: duration,
  deadline_s: deadlineS,
};

async function main() {
  server = http.createServer(serve);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  const ws = await launch();
  const browser = await within(puppeteer.connect({ browserWSEndpoint: ws, defaultViewport: null }), 20000, 'connect');
  result.browser = await browser.version();
  const page = await browser.newPage();
  const console_msgs = [];
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warn' || m.type() === 'warning') {
      console_msgs.push(`${m.type()}: ${m.text()}`.slice(0, 500));
    }
  });
  page.on('pageerror', (e) => console_msgs.push(`pageerror: ${e.message}`));
  await within(page.goto(`${base}/__harness/index.html`, { waitUntil: 'load' }), 20000, 'harness page');
  await within(page.waitForFunction('window.harnessReady === true', { timeout: 10000 }), 11000, 'harness');

  const masterText = fs.readFileSync(master, 'utf8');
  const codecs = [...new Set([...masterText.matchAll(/CODECS="([^"]+)"/g)].map((m) => m[1]))];
  result.support = await page.evaluate(
    (cs) => window.harness.support(cs.flatMap((c) => [`video/mp4; codecs="${c}"`, `video/mp2t; codecs="${c}"`])),
    codecs,
  );

  const src = `${base}/hls/master.m3u8`;
  const passMs = () => Math.max(5000, Math.min(left() - 5000, duration * 1000 * 1.5 + 20000));
  let ms = passMs();
  result.linear = await within(
    page.evaluate((s, d, dbg) => window.harness.hlsLinear(s, d, dbg), src, ms, debug),
    ms + 5000,
    'linear pass',
  );
  ms = passMs();
  result.seeks = await within(
    page.evaluate((s, d, dbg) => window.harness.hlsSeeks(s, d, dbg), src, ms, debug),
    ms + 5000,
    'seek pass',
  );
  ms = passMs();
  result.mp4 = await within(
    page.evaluate((urls, d) => Promise.all(urls.map((u) => window.harness.mp4(u, d))), mp4s.map((f) => `${base}/${f}`), ms),
    ms + 5000,
    'mp4 pass',
  );
  result.http = http_log;
  result.console = console_msgs;
  result.wall_s = +((Date.now() - started) / 1000).toFixed(2);
  await within(browser.close(), 5000, 'browser close').catch(() => {});
}

main().then(
  () => finish(0, result),
  (e) => {
    process.stderr.write(`play.mjs: ${e.stack || e}\n`);
    result.failure = String(e.message || e);
    result.http = http_log;
    finish(2, result);
  },
);
