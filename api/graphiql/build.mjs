// Bundles src/main.jsx (GraphiQL, React and GraphiQL's CSS, its fonts inlined) into dist/graphiql.js
// and dist/graphiql.css, minified; the licence notices of the bundled packages go to *.LEGAL.txt.
import * as esbuild from "esbuild";

await esbuild.build({
  entryPoints: { graphiql: "src/main.jsx" },
  bundle: true,
  minify: true,
  format: "iife",
  target: ["es2020"],
  jsx: "automatic",
  define: { "process.env.NODE_ENV": '"production"' },
  loader: { ".woff2": "dataurl", ".woff": "dataurl", ".ttf": "dataurl", ".svg": "dataurl" },
  legalComments: "linked",
  outdir: "dist",
  logLevel: "info",
});
