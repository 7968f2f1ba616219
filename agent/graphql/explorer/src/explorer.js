// The rating-agent GraphQL explorer: GraphiQL on this agent's own /graphql, nothing else.
// Bundled by `npm run build` (esbuild) into static/explorer.js and static/explorer.css, which the agent
// serves under /graphql/explorer/ with a Content-Security-Policy of its own origin only.
import { createElement } from "react";
import { createRoot } from "react-dom/client";
import { GraphiQL } from "graphiql";
import "graphiql/style.css";
import "./page.css";

// Always this origin's endpoint (never a URL taken from the page's address or the query string): the
// management token typed in the Headers tab goes nowhere else, and CSP connect-src 'self' enforces it.
const ENDPOINT = new URL("/graphql", window.location.origin).href;

const INITIAL_QUERY = `# rating-agent GraphQL explorer.
#
# Management queries and mutations need the management token: put
#   {"Authorization": "Bearer <token>"}
# in the Headers tab below. It is kept in this tab only (not stored) and
# sent only to this agent's /graphql. \`version\` and introspection are open.
#
# Run with Ctrl-Enter or the play button.
{
  version
}
`;

async function fetcher(params, options) {
  const headers = { ...(options && options.headers), "Content-Type": "application/json", Accept: "application/json" };
  const response = await fetch(ENDPOINT, {
    method: "POST",
    headers,
    body: JSON.stringify(params),
    credentials: "omit",
    cache: "no-store",
    redirect: "error",
  });
  const text = await response.text();
  try {
    return JSON.parse(text);
  } catch {
    return { errors: [{ message: `HTTP ${response.status}: ${text}` }] };
  }
}

function Explorer() {
  return createElement(GraphiQL, {
    fetcher,
    initialQuery: INITIAL_QUERY,
    defaultEditorToolsVisibility: true,
    shouldPersistHeaders: false,
  });
}

createRoot(document.getElementById("graphiql")).render(createElement(Explorer));
