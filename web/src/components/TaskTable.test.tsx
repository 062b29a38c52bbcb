import { render, screen, within } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { describe, expect, it } from 'vitest';
import { task } from '../testing';
import { TaskTable } from './TaskTable';

describe('TaskTable', () => {
  const tasks = [
    task({ id: 'aaaaaaaa-0000-0000-0000-000000000001', status: 'running', command: 'train' }),
    task({
      id: 'bbbbbbbb-0000-0000-0000-000000000002',
      status: 'failed',
      command: 'predict',
      error: { code: 'model_not_found', message: 'gone' },
    }),
  ];

  it('shows status badges, progress and stage for each task', () => {
    render(<TaskTable tasks={tasks} />);
    const rows = screen.getAllByRole('row').slice(1);
    expect(rows).toHaveLength(2);
    expect(within(rows[0]).getByText('running')).toHaveClass('badge-running');
    expect(within(rows[0]).getByRole('progressbar')).toHaveAttribute('aria-valuenow', '25');
    expect(within(rows[0]).getByText('epoch 1/4')).toBeInTheDocument();
    expect(within(rows[1]).getByText('model_not_found')).toBeInTheDocument();
    expect(within(rows[0]).getByRole('link')).toHaveAttribute('href', `/tasks/${tasks[0].id}`);
  });

  it('filters by status and command', async () => {
    render(<TaskTable tasks={tasks} />);
    await userEvent.selectOptions(screen.getByLabelText('Status'), 'failed');
    expect(screen.getAllByRole('row')).toHaveLength(2);
    expect(within(screen.getByRole('table')).getByText('predict')).toBeInTheDocument();
    await userEvent.selectOptions(screen.getByLabelText('Command'), 'train');
    expect(screen.getByText('No task matches these filters.')).toBeInTheDocument();
  });

  it('says how to start when there are no tasks', () => {
    render(<TaskTable tasks={[]} />);
    expect(screen.getByText(/No tasks yet/)).toBeInTheDocument();
  });
});
