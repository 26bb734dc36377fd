// WebCrypto in browsers and Node 19+ is global; Node 18 has it only as
// node:crypto's `webcrypto`. The module name is a variable so that bundlers
// do not try to bundle node:crypto for browsers.
export async function webCrypto(): Promise<Crypto> {
  if (globalThis.crypto?.subtle) return globalThis.crypto;
  const name = "node:crypto";
  return ((await import(name)) as { webcrypto: Crypto }).webcrypto;
}
