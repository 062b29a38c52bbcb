import { render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ApiDocs, typeOf, type OpenApiDoc } from './ApiDocs';

const doc: OpenApiDoc = {
  openapi: '3.1.0',
  info: { title: 'mlq', description: 'Upload files, run ML commands.', version: '0.1.0' },
  tags: [
    { name: 'health', description: 'Probes' },
    { name: 'tasks', description: 'Tasks' },
  ],
  paths: {
    '/healthz': {
      get: { summary: 'The process is alive.', tags: ['health'], security: [{}], responses: { '200': { description: 'Alive' } } },
    },
    '/api/v1/tasks/{id}': {
      get: {
        summary: 'One task.',
        tags: ['tasks'],
        parameters: [{ name: 'id', in: 'path', required: true, description: "The task's id", schema: { type: 'string', format: 'uuid' } }],
        responses: {
          '200': { description: 'The task', content: { 'application/json': { schema: { $ref: '#/components/schemas/TaskView' } } } },
          '401': { $ref: '#/components/responses/Unauthorized' },
        },
      },
    },
  },
  components: {
    schemas: {
      TaskView: {
        type: 'object',
        description: 'A task as the API shows it.',
        required: ['id'],
        properties: { id: { type: 'string', format: 'uuid' }, error: { type: ['object', 'null'], description: 'Why it failed' } },
      },
    },
    responses: { Unauthorized: { description: 'No credential' } },
  },
};

afterEach(() => vi.unstubAllGlobals());

describe('typeOf', () => {
  it('says what a schema is in a few words', () => {
    expect(typeOf({ $ref: '#/components/schemas/TaskView' })).toBe('TaskView');
    expect(typeOf({ type: 'string', format: 'uuid' })).toBe('string (uuid)');
    expect(typeOf({ type: ['integer', 'null'], format: 'int64' })).toBe('integer (int64)');
    expect(typeOf({ type: 'array', items: { $ref: '#/components/schemas/ModelView' } })).toBe('[ModelView]');
    expect(typeOf({ enum: ['queued', 'running'] })).toBe('"queued" | "running"');
    expect(typeOf({ oneOf: [{ type: 'null' }, { $ref: '#/x/Credential' }] })).toBe('Credential');
    expect(typeOf(undefined)).toBe('any');
  });
});

describe('ApiDocs', () => {
  it('renders each operation under its tag, with parameters, answers and referred responses', async () => {
    vi.stubGlobal(
      'fetch',
      vi.fn(async () => new Response(JSON.stringify(doc), { status: 200, headers: { 'content-type': 'application/json' } })),
    );
    render(<ApiDocs />);
    const tasks = await screen.findByRole('region', { name: /tasks/ });
    expect(within(tasks).getByText('/api/v1/tasks/{id}')).toBeTruthy();
    expect(within(screen.getByRole('region', { name: /health/ })).getByText('no credential')).toBeTruthy();
    await userEvent.click(within(tasks).getByText('One task.'));
    expect(within(tasks).getByText('string (uuid)')).toBeTruthy();
    expect(within(tasks).getByText('TaskView')).toBeTruthy();
    // A response given by reference is shown by its description.
    expect(within(tasks).getByText(/No credential/)).toBeTruthy();
    expect(screen.getByText(/OpenAPI 3\.1\.0 · 2 operations/)).toBeTruthy();
  });

  it('says why when the document cannot be read', async () => {
    vi.stubGlobal(
      'fetch',
      vi.fn(
        async () =>
          new Response(JSON.stringify({ error: { code: 'unauthorized', message: 'the credential is invalid' } }), {
            status: 401,
            headers: { 'content-type': 'application/json' },
          }),
      ),
    );
    render(<ApiDocs />);
    expect(await screen.findByText(/the credential is invalid/)).toBeTruthy();
  });
});
