// The graphql-http audit suite (GraphQL over HTTP conformance) against a running omnimember:
//   node tests/graphql_http/audit.mjs http://127.0.0.1:8000/graphql
// Prints every audit's result; exits 1 if any MUST (error) or SHOULD (warn) audit fails. MAY audits
// that fail are printed as notices and do not fail the run. tests/test_graphql_over_http.py runs it.
import { auditServer } from 'graphql-http';

const url = process.argv[2];
if (!url) {
  console.error('usage: node audit.mjs <graphql url>');
  process.exit(2);
}

const results = await auditServer({ url });
const mark = { ok: 'ok    ', notice: 'notice', warn: 'WARN  ', error: 'ERROR ' };
const failed = [];
for (const result of results.sort((a, b) => a.name.localeCompare(b.name))) {
  let line = `${mark[result.status]} ${result.id} ${result.name}`;
  if (result.status !== 'ok') {
    const body = await result.response.text().catch(() => '(body unreadable)');
    const type = result.response.headers.get('content-type');
    line += `\n         ${result.reason}: ${result.response.status} ${type} ${body.slice(0, 300)}`;
  }
  console.log(line);
  if (result.status === 'error' || result.status === 'warn') failed.push(`${result.id} ${result.name}`);
}
const count = (status) => results.filter((r) => r.status === status).length;
console.log(
  `\n${results.length} audits: ${count('ok')} ok, ${count('error')} MUST failed,` +
    ` ${count('warn')} SHOULD failed, ${count('notice')} MAY not met`,
);
if (failed.length) {
  console.error(`failed MUST/SHOULD audits:\n  ${failed.join('\n  ')}`);
  process.exit(1);
}
