// Upstream's test files import { tap, expect } from '@git.zone/tstest/tapbundle' and end with
// tap.start(). Here that specifier maps onto @push.rocks/tapbundle. One difference: tapbundle's
// plain tap.start() exits 0 even when tests fail, while tstest fails the file; so start() defaults
// to { throwOnError: true } and a failing test makes its file exit non-zero.
import * as tapbundle from '@push.rocks/tapbundle';

export * from '@push.rocks/tapbundle';

const tap = tapbundle.tap;
const originalStart = tap.start.bind(tap);
tap.start = (options) => originalStart({ throwOnError: true, ...(options || {}) });

export { tap };
