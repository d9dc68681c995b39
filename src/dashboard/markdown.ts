/**
 * Renders an `erl compare` report (Markdown with tables and images) to HTML that is safe to put in the
 * page: markdown-it with raw HTML turned off escapes every tag in the text and refuses `javascript:`
 * and similar links; relative image and link targets are rewritten to the server's `/files/` route,
 * which serves only files inside the runs directory. Images from other hosts are not loaded.
 */
import MarkdownIt from "markdown-it";
import { posix } from "node:path";

/** Maps a target written in a report to a `/files/` URL, or null when it must not be followed. */
export function reportAssetUrl(reportId: string, target: string): string | null {
  const t = target.trim();
  if (t === "" || t.startsWith("#")) return null;
  // Anything with a scheme or starting with "/" or "//" points outside the report's directory tree.
  if (/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(t) || t.startsWith("/") || t.includes("\\")) return null;
  const [pathPart] = t.split(/[?#]/, 1);
  let decoded: string;
  try {
    decoded = decodeURIComponent(pathPart ?? "");
  } catch {
    return null;
  }
  const base = reportId === "." ? "" : reportId;
  const joined = posix.normalize(posix.join(base, decoded));
  if (joined === ".." || joined.startsWith("../") || joined.startsWith("/") || joined === ".") return null;
  return "/files/" + joined.split("/").map(encodeURIComponent).join("/");
}

export function renderReport(reportId: string, markdown: string): string {
  const md = new MarkdownIt({ html: false, linkify: false, typographer: false });
  const defaultImage = md.renderer.rules.image!;
  md.renderer.rules.image = (tokens, idx, options, env, self) => {
    const token = tokens[idx]!;
    const src = token.attrGet("src") ?? "";
    const url = reportAssetUrl(reportId, src);
    if (!url) return `<span class="missing-image">[image not shown: ${md.utils.escapeHtml(src)}]</span>`;
    token.attrSet("src", url);
    token.attrSet("loading", "lazy");
    return defaultImage(tokens, idx, options, env, self);
  };
  const defaultLinkOpen =
    md.renderer.rules.link_open ??
    ((tokens, idx, options, _env, self) => self.renderToken(tokens, idx, options));
  md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
    const token = tokens[idx]!;
    const href = token.attrGet("href") ?? "";
    if (/^https?:/i.test(href)) {
      token.attrSet("rel", "noopener noreferrer");
      token.attrSet("target", "_blank");
    } else if (!href.startsWith("#")) {
      const url = reportAssetUrl(reportId, href);
      token.attrSet("href", url ?? "#");
    }
    return defaultLinkOpen(tokens, idx, options, env, self);
  };
  return md.render(markdown);
}
