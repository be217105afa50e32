// Test driver of tests/examples/test_js_client.py: runs examples/js/predict.mjs (copied beside
// it, next to node_modules) on the jobs of a JSON file and writes every output as raw float32.
// usage: node js_check.mjs JOBS.json
//   JOBS.json: [{"model": path, "x": raw float32 path, "shape": [B, ...], "samples": S,
//                "out": prefix}, ...] -> prefix.<output>.bin and prefix.json ({output: dims})
import fs from 'node:fs';
import { openModel, predict } from './predict.mjs';

const jobs = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const sessions = new Map();
for (const job of jobs) {
  if (!sessions.has(job.model)) sessions.set(job.model, await openModel(job.model));
  const session = sessions.get(job.model);
  const raw = fs.readFileSync(job.x);
  const x = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.length));
  const out = await predict(session, x, job.shape, job.samples);
  const dims = {};
  for (const [name, tensor] of Object.entries(out)) {
    if (tensor.type !== 'float32') throw new Error(`${name}: ${tensor.type}, expected float32`);
    fs.writeFileSync(`${job.out}.${name}.bin`, Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength));
    dims[name] = tensor.dims;
  }
  fs.writeFileSync(`${job.out}.json`, JSON.stringify({ inputNames: session.inputNames, dims }));
}
