// Builds the native addon (release) if none exists yet; used by `pnpm start` so that the quick
// start works on a fresh clone. `pnpm test` always rebuilds (ci profile) to test the current source.
import { readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
if (!readdirSync(root).some((f) => /^smartproxy-native\..*\.node$/.test(f))) {
  console.log('building the native addon (first run; takes a minute or two)...');
  const r = spawnSync('pnpm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) process.exit(r.status ?? 1);
}
