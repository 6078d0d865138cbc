// Composes omnimember's subgraph SDL (the file named first) with reviews.graphql, using Apollo's
// composition library, and prints what came of it as JSON: {errors, hints, supergraphSdl}.
// tests/test_federation.py runs it; `npm ci --prefix tests/federation` installs the library.
import { readFileSync } from "node:fs";
import { parse } from "graphql";
import { composeServices } from "@apollo/composition";

const [omnimember, other = new URL("./reviews.graphql", import.meta.url)] = process.argv.slice(2);
const result = composeServices([
  { name: "omnimember", url: "http://omnimember.test/graphql", typeDefs: parse(readFileSync(omnimember, "utf8")) },
  { name: "reviews", url: "http://reviews.test/graphql", typeDefs: parse(readFileSync(other, "utf8")) },
]);
console.log(
  JSON.stringify({
    errors: (result.errors ?? []).map((error) => ({ code: error.extensions?.code ?? null, message: error.message })),
    hints: (result.hints ?? []).map((hint) => ({ code: hint.definition.code, message: hint.message })),
    supergraphSdl: result.supergraphSdl ?? null,
  }),
);
