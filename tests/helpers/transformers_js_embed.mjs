// Sentence embeddings from transformers.js (Node, onnxruntime-node) of an exported folder, on token ids
// made by Python's tokenizer (so that only the runtime is compared, not two tokenizers).
// usage: node transformers_js_embed.mjs NODE_MODULES_PARENT MODEL_DIR DTYPE BATCHES_JSON  -> JSON rows on stdout
// BATCHES_JSON: [{"input_ids": [[...]], "attention_mask": [[...]], "token_type_ids": [[...]]}, ...]
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [root, modelDir, dtype, batchesFile] = process.argv.slice(2);
const entry = createRequire(resolve(root, "package.json")).resolve("@huggingface/transformers");
const { env, AutoModel, Tensor } = await import(pathToFileURL(entry).href);
env.allowRemoteModels = false;
env.localModelPath = dirname(resolve(modelDir)) + "/";
const model = await AutoModel.from_pretrained(basename(resolve(modelDir)), { dtype, device: "cpu" });

const int64 = (rows) => new Tensor("int64", BigInt64Array.from(rows.flat().map(BigInt)), [rows.length, rows[0].length]);
const out = [];
for (const batch of JSON.parse(readFileSync(batchesFile, "utf8"))) {
  const feeds = Object.fromEntries(Object.entries(batch).map(([name, rows]) => [name, int64(rows)]));
  const hidden = (await model(feeds)).last_hidden_state.tolist();
  hidden.forEach((tokens, b) => {
    const mask = batch.attention_mask[b];
    const sum = new Array(tokens[0].length).fill(0);
    tokens.forEach((h, t) => { if (mask[t]) h.forEach((x, j) => { sum[j] += x; }); });
    const n = mask.reduce((a, m) => a + m, 0);
    const mean = sum.map((x) => x / n);
    const norm = Math.sqrt(mean.reduce((a, x) => a + x * x, 0));
    out.push(mean.map((x) => x / norm));
  });
}
process.stdout.write(JSON.stringify(out));
