'use strict';
// User configuration (upstream's TypeScript unions, functions, RegExps, Buffers) → the JSON wire
// format the engine validates. Functions become {"$fn": id} markers (collected in `functions`,
// for the JavaScript-in-the-data-path features), RegExps {"$regex": source, "flags": flags},
// Buffers UTF-8 strings. Nothing is dropped: the engine decides what is valid or unsupported.

// `functions` is a registry: register(fn) -> numeric id (stable for the same function).
function toWire(value, functions, seen = new Set()) {
  if (value === null || value === undefined) return value;
  if (typeof value === 'function') {
    return { $fn: functions.register(value) };
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

/**
 * Ids for the JavaScript functions in a configuration. A function keeps its id for as long as a
 * configuration that uses it is current, so connections that started under an older route
 * table can still call it while the new one is being installed.
 */
class FunctionRegistry {
  constructor() {
    this.byFn = new Map();
    this.byId = new Map();
    this.next = 1;
  }

  register(fn) {
    let id = this.byFn.get(fn);
    if (id === undefined) {
      id = this.next++;
      this.byFn.set(fn, id);
      this.byId.set(id, fn);
    }
    this.used.add(id);
    return id;
  }

  /** Starts collecting the functions of one configuration. */
  begin() {
    this.used = new Set();
  }

  /** Keeps only the functions of the current and the previous configuration. */
  commit() {
    const keep = new Set([...(this.previous || []), ...this.used]);
    for (const [id, fn] of this.byId) {
      if (!keep.has(id)) {
        this.byId.delete(id);
        this.byFn.delete(fn);
      }
    }
    this.previous = this.used;
  }

  get(id) {
    return this.byId.get(id);
  }
}

/** Serialises routes, registering their functions. */
function routesToJson(routes, registry = new FunctionRegistry()) {
  if (!Array.isArray(routes)) {
    const e = new Error('routes: expected an array of routes');
    e.code = 'ERR_INVALID_CONFIG';
    throw e;
  }
  if (!registry.used) registry.begin();
  return JSON.stringify(toWire(routes, registry));
}

/** Serialises the options other than routes (a function there, e.g. certProvisionFunction, is marked). */
function optionsToJson(settings, registry = new FunctionRegistry()) {
  const { routes, ...rest } = settings;
  if (!registry.used) registry.begin();
  return JSON.stringify(toWire(rest, registry));
}

/** Copies `src` without keys whose value is undefined (so they do not hide defaults). */
function defined(src) {
  const out = {};
  for (const [k, v] of Object.entries(src || {})) if (v !== undefined) out[k] = v;
  return out;
}

module.exports = { routesToJson, optionsToJson, defined, toWire, FunctionRegistry };
