// What the browser scripts share: Chromium launched as the tests need it, contexts that may
// reach only loopback and report every Content-Security-Policy violation, deadlines on every
// wait, and axe-core on a screen.

import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

export const TIMEOUT = 10_000;

// axe-core's browser bundle. It is evaluated through the DevTools protocol, which the page's
// Content-Security-Policy does not govern, so the policy stays as strict as in production.
const axeSource = await readFile(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

/** Fails the step with `message` unless `condition` holds. */
export function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Waits until `fn(arg)` is truthy in the page, failing with `what` after the deadline. */
export async function waitIn(page, what, fn, arg, timeout = TIMEOUT) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 50 });
  } catch (error) {
    throw new Error(`${what}: not true within ${timeout} ms (${error.message.split('\n')[0]})`);
  }
}

/** Debian's Chromium, headless, with nothing of its own going out. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.BALINT_CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
    ],
  });
}

/** Refuses, as a problem of the run, every request of the context that would leave loopback. */
export async function loopbackOnly(context, who, problems) {
  await context.route('**/*', (route) => {
    const host = new URL(route.request().url()).hostname;
    if (['127.0.0.1', 'localhost', '[::1]'].includes(host)) return route.continue();
    problems.push(`${who}: a request left loopback: ${route.request().url()}`);
    return route.abort();
  });
}

/**
 * Reports every Content-Security-Policy violation of the context's pages as a problem, from the
 * first script on, across navigations.
 */
export async function watchPolicy(context, who, problems) {
  await context.exposeBinding('__reportPolicyViolation', (source, violation) => {
    problems.push(`${who}: CSP violation on ${source.page?.url().split('#')[0]}: ${violation}`);
  });
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (event) => {
      const where = event.sourceFile ? ` at ${event.sourceFile}:${event.lineNumber}` : '';
      window.__reportPolicyViolation(`${event.effectiveDirective} blocked ${event.blockedURI || 'inline'}${where}`);
    });
  });
}

/**
 * Runs axe-core on the page as it stands, in its colour scheme and then in the other one (the
 * page follows the system's light or dark setting); any violation is a problem of the run.
 */
export async function accessible(page, screen, problems) {
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(axeSource);
  const run = () => page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(' ')).slice(0, 4).join(', ')}`);
  });
  const media = () => page.evaluate(() => ({
    colorScheme: matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light',
    reducedMotion: matchMedia('(prefers-reduced-motion: reduce)').matches ? 'reduce' : 'no-preference',
  }));
  const before = await media();
  const violations = (await run()).map((v) => `${before.colorScheme}: ${v}`);
  // The other scheme, with no transitions, so that axe reads the colours they end at.
  const other = before.colorScheme === 'dark' ? 'light' : 'dark';
  await page.emulateMedia({ colorScheme: other, reducedMotion: 'reduce' });
  const switched = await media();
  check(switched.colorScheme === other, `${screen}: the page did not switch to its ${other} scheme`);
  violations.push(...(await run()).map((v) => `${other}: ${v}`));
  await page.emulateMedia(before);
  for (const violation of violations) problems.push(`axe on ${screen}: ${violation}`);
  check(violations.length === 0, `axe found violations on ${screen}:\n${violations.join('\n')}`);
}
