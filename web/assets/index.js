// The front page: creates a room with POST /api/rooms and shows its links.
// Nothing is stored in the browser: the links are shown once, to be copied.

const form = document.getElementById('create');
const button = document.getElementById('create-button');
const status = document.getElementById('create-status');
const created = document.getElementById('created');

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const data = new FormData(form);
  const title = String(data.get('title') || '').trim();
  const body = {
    ephemeral: data.get('keep') !== 'persistent',
    template: data.get('template') === 'open' ? 'open' : 'balint',
    lobby: data.get('lobby') === 'on',
  };
  if (title) body.title = title;

  button.disabled = true;
  status.textContent = 'Creating the room…';
  try {
    const response = await fetch('/api/rooms', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    const answer = await response.json().catch(() => ({}));
    if (response.status !== 201) {
      throw new Error(answer.message || `the server answered ${response.status}`);
    }
    show(answer);
    status.textContent = '';
  } catch (error) {
    status.textContent = `The room could not be created: ${error.message}. Please try again.`;
  } finally {
    button.disabled = false;
  }
});

function show(room) {
  document.getElementById('leader-link').value = room.leader_url;
  document.getElementById('invite-link').value = room.invite_url;
  document.getElementById('observer-link').value = room.observer_url;
  document.getElementById('open-leader').href = room.leader_url;
  form.hidden = true;
  created.hidden = false;
  created.focus();
}

const copyStatus = document.getElementById('copy-status');
for (const copy of document.querySelectorAll('[data-copy]')) {
  copy.addEventListener('click', async () => {
    const input = document.getElementById(copy.dataset.copy);
    const label = document.querySelector(`label[for="${input.id}"]`).firstChild.textContent.trim();
    try {
      await navigator.clipboard.writeText(input.value);
      copyStatus.textContent = `${label} copied.`;
    } catch {
      // Without clipboard access, select the text so that the user can copy it by hand.
      input.focus();
      input.select();
      copyStatus.textContent = `${label} selected: press Ctrl+C (or ⌘C) to copy it.`;
    }
  });
}
