'use strict';
// User configuration (upstream's TypeScript unions, functions, RegExps, Buffers) → the JSON wire
// format the engine validates. Functions become {"$fn": id} markers (collected in `functions`,
// for the JavaScript-in-the-data-path features), RegExps {"$regex": source, "flags": flags},
// Buffers UTF-8 strings. Nothing is dropped: the engine decides what is valid or unsupported.

function toWire(value, functions, seen = new Set()) {
  if (value === null || value === undefined) return value;
  if (typeof value === 'function') {
    functions.push(value);
    return { $fn: functions.length - 1 };
  }
  if (value instanceof RegExp) return { $regex: value.source, flags: value.flags };
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  if (value instanceof Date) return value.getTime();
  if (typeof value === 'bigint') return Number(value);
  if (typeof value !== 'object') return value;
  if (seen.has(value)) throw new TypeError('configuration contains a circular reference');
  seen.add(value);
  let out;
  if (Array.isArray(value)) {
    out = value.map((v) => toWire(v, functions, seen));
  } else {
    out = {};
    for (const [k, v] of Object.entries(value)) {
      if (v !== undefined) out[k] = toWire(v, functions, seen);
    }
  }
  seen.delete(value);
  return out;
}

/** Serialises routes; returns the JSON text and the functions found in them. */
function routesToJson(routes) {
  if (!Array.isArray(routes)) {
    const e = new Error('routes: expected an array of routes');
    e.code = 'ERR_INVALID_CONFIG';
    throw e;
  }
  const functions = [];
  return { json: JSON.stringify(toWire(routes, functions)), functions };
}

/** Serialises the options other than routes. */
function optionsToJson(settings) {
  const functions = [];
  const { routes, ...rest } = settings;
  return { json: JSON.stringify(toWire(rest, functions)), functions };
}

/** Copies `src` without keys whose value is undefined (so they do not hide defaults). */
function defined(src) {
  const out = {};
  for (const [k, v] of Object.entries(src || {})) if (v !== undefined) out[k] = v;
  return out;
}

module.exports = { routesToJson, optionsToJson, defined, toWire };
