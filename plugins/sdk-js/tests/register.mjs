// `node --import ./register.mjs`: resolve the WIT imports
// (`logstream:processor/host-log@0.1.0`) to host-stub.mjs, so the SDK and
// the examples load unchanged under Node.
import { register } from "node:module";
register("./hooks.mjs", import.meta.url);
