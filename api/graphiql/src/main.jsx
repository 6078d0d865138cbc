// omnimember's GraphiQL: everything it needs is bundled into dist/ by build.sh, so the page that
// GET /graphql serves loads nothing from outside the service and works offline.
import { createGraphiQLFetcher } from "@graphiql/toolkit";
import { GraphiQL } from "graphiql";
import "graphiql/style.css";
import "./page.css";
import { createRoot } from "react-dom/client";

const WELCOME = `# omnimember GraphiQL: write a query, then run it with Ctrl-Enter or the play button.
#
# In development mode (omnimember serve --dev) requests from this machine need no key;
# otherwise put your API key in the Headers tab below:
#   { "Authorization": "Bearer om_..." }

{
  brands {
    code
  }
}
`;

// The page is served at the GraphQL endpoint itself: send the queries to the same path.
const fetcher = createGraphiQLFetcher({ url: window.location.pathname });

createRoot(document.getElementById("graphiql")).render(
  <GraphiQL fetcher={fetcher} defaultQuery={WELCOME} isHeadersEditorEnabled={true} />,
);
