import { describe, expect, it } from 'vitest';
import { parseCsv } from './Previews';

describe('parseCsv', () => {
  it('handles quotes, escaped quotes and CRLF, and drops a cut-off last line', () => {
    const rows = parseCsv('a,"b, c"\r\n"say ""hi""",2\npartial,li', 10);
    expect(rows).toEqual([
      ['a', 'b, c'],
      ['say "hi"', '2'],
    ]);
    expect(parseCsv('a,b\n1,2', 10, true)).toEqual([['a', 'b'], ['1', '2']]);
    expect(parseCsv('a\n1\n2\n3\n', 2)).toHaveLength(2);
  });
});
