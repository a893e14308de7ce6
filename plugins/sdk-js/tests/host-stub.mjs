// Stands in for the component's `logstream:processor/*` imports when the
// SDK runs under Node (tests/register.mjs maps them here).
export const logged = [];
export function log(level, message) {
  logged.push([level, message]);
}
