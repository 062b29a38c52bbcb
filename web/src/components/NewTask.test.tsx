import { act, fireEvent, render, screen, waitFor } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FakeXhr, fakeFetch } from '../testing';
import { NewTask, label } from './NewTask';

describe('label', () => {
  it('turns param names into labels', () => {
    expect(label('batch_size')).toBe('Batch size');
    expect(label('epochs')).toBe('Epochs');
  });
});

describe('NewTask', () => {
  beforeEach(() => {
    vi.stubGlobal('XMLHttpRequest', FakeXhr);
    vi.stubGlobal('fetch', vi.fn(fakeFetch()));
  });
  afterEach(() => vi.unstubAllGlobals());

  const dropCsv = () => {
    const file = new File(['x,label\n1,0\n'], 'data.csv', { type: 'text/csv' });
    fireEvent.drop(screen.getByTestId('dropzone'), { dataTransfer: { files: [file] } });
    return file;
  };

  it('builds its fields from the command schema and checks them before uploading', async () => {
    render(<NewTask />);
    // Ranges and defaults come from the server's schema.
    const epochs = await screen.findByLabelText('Epochs');
    expect(epochs).toHaveAttribute('placeholder', '20');
    expect(screen.getByText('[1, 1000]')).toBeInTheDocument();
    await userEvent.type(epochs, '0');
    await userEvent.click(screen.getByRole('button', { name: 'Start train' }));
    expect(screen.getByText('choose a CSV file, or a zip of images in class folders')).toBeInTheDocument();
    expect(epochs).toHaveAttribute('aria-invalid', 'true');
    expect(screen.getByText('must be in [1, 1000]')).toBeInTheDocument();
    expect(screen.getByLabelText('Target column')).toHaveAttribute('aria-invalid', 'true');
  });

  it('shows the params of the kind of file chosen: a CSV\'s target, a zip\'s image size', async () => {
    render(<NewTask />);
    await screen.findByLabelText('Epochs');
    // Before a file is chosen, both kinds show.
    expect(screen.getByLabelText('Target column')).toBeInTheDocument();
    expect(screen.getByLabelText('Width')).toBeInTheDocument();
    const zip = new File(['PK'], 'shapes.zip', { type: 'application/zip' });
    fireEvent.drop(screen.getByTestId('dropzone'), { dataTransfer: { files: [zip] } });
    await waitFor(() => expect(screen.queryByLabelText('Target column')).not.toBeInTheDocument());
    expect(screen.getByLabelText('Width')).toBeInTheDocument();
    expect(screen.getByLabelText('Epochs')).toBeInTheDocument();
    await userEvent.click(screen.getByRole('button', { name: 'Remove shapes.zip' }));
    dropCsv();
    await waitFor(() => expect(screen.queryByLabelText('Width')).not.toBeInTheDocument());
    expect(screen.getByLabelText('Target column')).toBeInTheDocument();
  });

  it('takes several dropped files but asks to keep the one a command reads', async () => {
    render(<NewTask />);
    await screen.findByLabelText('Epochs');
    dropCsv();
    dropCsv();
    expect(screen.getAllByRole('button', { name: 'Remove data.csv' })).toHaveLength(2);
    await userEvent.click(screen.getByRole('button', { name: 'Start train' }));
    expect(screen.getByText('train takes one file; remove 1 of them')).toBeInTheDocument();
    await userEvent.click(screen.getAllByRole('button', { name: 'Remove data.csv' })[0]);
    expect(screen.getAllByRole('button', { name: 'Remove data.csv' })).toHaveLength(1);
  });

  it('uploads dropped files with a byte progress bar, and can cancel', async () => {
    render(<NewTask />);
    await screen.findByLabelText('Epochs');
    dropCsv();
    expect(screen.getByRole('list', { name: 'Selected files' })).toHaveTextContent('data.csv');
    // The target picker offers the CSV's columns.
    await waitFor(() => expect(screen.getByLabelText('Target column').tagName).toBe('SELECT'));
    await userEvent.selectOptions(screen.getByLabelText('Target column'), 'label');
    await userEvent.click(screen.getByRole('button', { name: 'Start train' }));

    const xhr = FakeXhr.latest;
    expect(xhr.sent?.get('command')).toBe('train');
    expect(JSON.parse(String(xhr.sent?.get('params'))).target).toBe('label');
    act(() => xhr.upload.onprogress?.({ loaded: 6, total: 12, lengthComputable: true }));
    expect(screen.getByRole('progressbar', { name: 'Upload progress' })).toHaveAttribute('aria-valuenow', '50');
    expect(screen.getByText('6 B of 12 B sent')).toBeInTheDocument();

    await userEvent.click(screen.getByRole('button', { name: 'Cancel upload' }));
    expect(xhr.aborted).toBe(true);
    expect(await screen.findByRole('alert')).toHaveTextContent('Upload cancelled');
  });

  it('shows the server error naming the field', async () => {
    render(<NewTask />);
    await screen.findByLabelText('Epochs');
    dropCsv();
    await waitFor(() => expect(screen.getByLabelText('Target column').tagName).toBe('SELECT'));
    await userEvent.selectOptions(screen.getByLabelText('Target column'), 'label');
    await userEvent.click(screen.getByRole('button', { name: 'Start train' }));
    const xhr = FakeXhr.latest;
    act(() => {
      xhr.status = 422;
      xhr.responseText = JSON.stringify({ error: { code: 'invalid_params', field: 'target', message: 'invalid params: target: no such column' } });
      xhr.onload?.();
    });
    expect(await screen.findByRole('alert')).toHaveTextContent('no such column');
    expect(screen.getByLabelText('Target column')).toHaveAttribute('aria-invalid', 'true');
  });
});
