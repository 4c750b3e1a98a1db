'use strict';
// Maps native errors (message "[CODE] text") to Error objects with `code`, and builds the
// loud "not supported yet" errors for features the engine does not implement.

function fromNative(err) {
  if (!(err instanceof Error)) return err;
  const m = /^\[([A-Z_]+)\] ([\s\S]*)$/.exec(err.message);
  if (!m) return err;
  const e = new Error(m[2]);
  e.code = m[1];
  return e;
}

async function callNative(fn) {
  try {
    return await fn();
  } catch (err) {
    throw fromNative(err);
  }
}

function notSupported(feature) {
  const e = new Error(`not supported yet: ${feature}`);
  e.code = 'ERR_NOT_SUPPORTED';
  return e;
}

module.exports = { fromNative, callNative, notSupported };
