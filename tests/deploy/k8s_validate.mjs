// Validates Kubernetes manifests offline against the Kubernetes API schemas.
//
//   node k8s_validate.mjs TOOLS_DIR valid FILE...     every document must validate
//   node k8s_validate.mjs TOOLS_DIR invalid FILE...   every file must be rejected, and
//       its errors must contain each "# expect: TEXT" line the file carries
//
// TOOLS_DIR is what tools/install_deploy_tools.sh installed (pinned npm packages):
// - kubernetes-models: Ajv validators compiled from the Kubernetes OpenAPI schema,
//   per apiVersion/kind. They check types, required fields, enums and formats
//   (quantities, int-or-string), but accept unknown fields, because the OpenAPI
//   schema has no additionalProperties: false.
// - @kubernetes/client-node: its models carry the field list and field types of every
//   API type (generated from the Kubernetes OpenAPI spec). A second pass walks each
//   document along them and rejects any field the API does not have, as the API
//   server's strict field validation (kubectl's default) would: a misspelt
//   "hostIpc: true" must not pass silently.
// Exit status: 0 when the expectation holds for every file, 1 otherwise.
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [toolsDir, mode, ...files] = process.argv.slice(2);
if (!toolsDir || !["valid", "invalid"].includes(mode) || files.length === 0) {
  console.error("usage: k8s_validate.mjs TOOLS_DIR valid|invalid FILE...");
  process.exit(2);
}
const modules = path.join(toolsDir, "node_modules");
const load = (rel) => import(pathToFileURL(path.join(modules, rel)).href);
const YAML = await load("yaml/dist/index.js");
const fieldModels = await load("@kubernetes/client-node/dist/gen/models/all.js");

// "apps/v1" + "DaemonSet" -> the kubernetes-models class, or null.
async function schemaModel(apiVersion, kind) {
  if (!/^([a-z0-9.-]+\/)?v[0-9]+((alpha|beta)[0-9]+)?$/.test(apiVersion) ||
      !/^[A-Z][A-Za-z0-9]*$/.test(kind)) {
    return null;
  }
  try {
    const mod = await load(`kubernetes-models/${apiVersion}/${kind}.mjs`);
    return mod[kind] ?? null;
  } catch {
    return null;
  }
}

const PRIMITIVES = new Set(["string", "number", "boolean", "Date", "any", "object",
                            "IntOrString"]);

// Appends to `errors` every field of `value` that type `typeName` does not have.
function unknownFields(value, typeName, where, errors) {
  if (value === null || value === undefined || PRIMITIVES.has(typeName)) return;
  let m = /^Array<(.+)>$/.exec(typeName);
  if (m) {
    if (Array.isArray(value)) {
      value.forEach((item, i) => unknownFields(item, m[1], `${where}/${i}`, errors));
    }
    return;
  }
  m = /^\{ \[key: string\]: (.+); \}$/.exec(typeName);
  if (m) {
    if (typeof value === "object") {
      for (const [k, v] of Object.entries(value)) {
        unknownFields(v, m[1], `${where}/${k}`, errors);
      }
    }
    return;
  }
  const model = fieldModels[typeName];
  if (!model || typeof model.getAttributeTypeMap !== "function") {
    errors.push(`${where}: no field list for API type ${typeName}`);
    return;
  }
  if (typeof value !== "object" || Array.isArray(value)) return;  // Ajv reports types
  const fields = new Map(model.getAttributeTypeMap().map((a) => [a.baseName, a.type]));
  for (const [k, v] of Object.entries(value)) {
    if (!fields.has(k)) {
      errors.push(`${where}/${k}: unknown field "${k}" (${typeName} has no such field)`);
    } else {
      unknownFields(v, fields.get(k), `${where}/${k}`, errors);
    }
  }
}

// The client-node model of a top-level object: "apps/v1" + "DaemonSet" -> V1DaemonSet.
function fieldTypeName(apiVersion, kind) {
  const version = apiVersion.split("/").pop();
  return version.charAt(0).toUpperCase() + version.slice(1) + kind;
}

async function validateDocument(doc) {
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    return ["document is not a mapping"];
  }
  const { apiVersion, kind } = doc;
  if (typeof apiVersion !== "string" || typeof kind !== "string") {
    return ["document has no apiVersion and kind"];
  }
  const Model = await schemaModel(apiVersion, kind);
  if (!Model) return [`no schema for apiVersion ${apiVersion}, kind ${kind}`];
  const errors = [];
  try {
    new Model(doc).validate();
  } catch (e) {
    errors.push(...String(e.message).split(", "));
  }
  unknownFields(doc, fieldTypeName(apiVersion, kind), "data", errors);
  return errors;
}

// Returns the errors of every document of one file, each prefixed with its name.
async function validateFile(file) {
  const text = readFileSync(file, "utf8");
  const errors = [];
  const docs = YAML.parseAllDocuments(text);
  for (const doc of docs) {
    if (doc.errors.length) {
      errors.push(...doc.errors.map((e) => `YAML: ${e.message}`));
      continue;
    }
    const value = doc.toJS();
    if (value === null || value === undefined) continue;  // an empty document
    const label = `${value.kind ?? "?"}/${value.metadata?.name ?? "?"}`;
    errors.push(...(await validateDocument(value)).map((e) => `${label}: ${e}`));
  }
  if (docs.length === 0) errors.push("no YAML document");
  return errors;
}

let failures = 0;
for (const file of files) {
  const errors = await validateFile(file);
  if (mode === "valid") {
    if (errors.length) {
      failures++;
      console.log(`INVALID ${file}\n  ${errors.join("\n  ")}`);
    } else {
      console.log(`ok      ${file}`);
    }
    continue;
  }
  const expected = [...readFileSync(file, "utf8").matchAll(/^# expect: (.+)$/gm)]
    .map((m) => m[1].trim());
  const joined = errors.join("\n");
  const missing = expected.filter((e) => !joined.includes(e));
  if (errors.length === 0 || expected.length === 0 || missing.length) {
    failures++;
    console.log(`NOT REJECTED AS EXPECTED ${file}` +
                (expected.length ? "" : " (the file has no '# expect:' line)") +
                (missing.length ? `\n  missing: ${missing.join("; ")}` : "") +
                `\n  errors: ${errors.length ? errors.join("\n          ") : "none"}`);
  } else {
    console.log(`rejected ${file}\n  ${errors.join("\n  ")}`);
  }
}
process.exit(failures ? 1 : 0);
