// The demo shop's pricing service (Node.js): GET /price?sku=SKU answers the item's net price and
// the tax the tax service computes for it.
//
// No tracing code: the Tracelight injector's NODE_OPTIONS loads the OpenTelemetry Node SDK with
// its auto-instrumentations (http in and out), configured by the injected OTEL_* variables.
'use strict';
const http = require('http');

const PORT = Number(process.env.PORT || 8070);
const TAX_URL = process.env.TAX_URL || 'http://tax:8090';
const PRICES = { book: 1200, lamp: 4500, mug: 800 };

function getJson(url) {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.on('data', (chunk) => (body += chunk));
        res.on('end', () => {
          if (res.statusCode !== 200) return reject(new Error(`${url}: HTTP ${res.statusCode}`));
          try {
            resolve(JSON.parse(body));
          } catch (e) {
            reject(e);
          }
        });
      })
      .on('error', reject);
  });
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(body));
  };
  if (url.pathname !== '/price') return reply(404, { error: 'not found' });
  const sku = url.searchParams.get('sku') || '';
  const cents = PRICES[sku];
  if (cents === undefined) return reply(404, { sku, error: 'unknown item' });
  try {
    const tax = await getJson(`${TAX_URL}/tax?cents=${cents}`);
    reply(200, { sku, cents, tax: tax.tax });
  } catch (e) {
    reply(502, { sku, error: String(e) });
  }
});

server.listen(PORT, '0.0.0.0', () => console.log(`pricing: listening on :${PORT}`));
// On the kubelet's SIGTERM stop listening; the process ends once the SDK (which also listens for
// SIGTERM) has flushed its spans and nothing else is pending.
process.on('SIGTERM', () => server.close());
