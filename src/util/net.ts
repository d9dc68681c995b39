/** Network addresses. */
import { isIP } from "node:net";

/**
 * Whether a listening host is this machine only: "localhost", an IPv4 address in 127.0.0.0/8, or
 * the IPv6 loopback. Anything else (a name, 0.0.0.0, "127.example.com") may be reachable from outside.
 */
export function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  if (isIP(host) === 4) return host.startsWith("127.");
  if (isIP(host) === 6) return host === "::1" || host === "0:0:0:0:0:0:0:1";
  return false;
}
