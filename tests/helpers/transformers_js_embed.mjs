// Sentence embeddings from transformers.js (Node, onnxruntime-node) of an exported folder.
// usage: node transformers_js_embed.mjs NODE_MODULES_PARENT MODEL_DIR DTYPE TEXTS_JSON  -> JSON rows on stdout
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const [root, modelDir, dtype, textsFile] = process.argv.slice(2);
const entry = createRequire(resolve(root, "package.json")).resolve("@huggingface/transformers");
const { env, pipeline } = await import(pathToFileURL(entry).href);
env.allowRemoteModels = false;
env.localModelPath = dirname(resolve(modelDir)) + "/";
const extractor = await pipeline("feature-extraction", basename(resolve(modelDir)), { dtype, device: "cpu" });
const texts = JSON.parse(readFileSync(textsFile, "utf8"));
const rows = [];
for (let i = 0; i < texts.length; i += 16) {
  const out = await extractor(texts.slice(i, i + 16), { pooling: "mean", normalize: true });
  rows.push(...out.tolist());
}
process.stdout.write(JSON.stringify(rows));
