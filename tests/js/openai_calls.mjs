// The official OpenAI JavaScript SDK (npm `openai`) asking the app about one frame, as a Node user would: a
// streamed completion (first: a test makes it wait its turn), a completion and a streamed Response. Prints one
// JSON object with what each gave.
//   node openai_calls.mjs BASE_URL FRAME_FILE QUESTION [MAX_TOKENS]
// The SDK is found through NODE_PATH (tests/.openai-js/node_modules, fetched by .ci/run).
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { default: OpenAI } = await import(require.resolve('openai'));

const [baseURL, framePath, question, maxTokens = '12'] = process.argv.slice(2);
const frame = readFileSync(framePath, 'utf8').trim();
const client = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: 'unused', maxRetries: 0, timeout: 60_000 });
const messages = [{ role: 'user', content: [{ type: 'text', text: question }, { type: 'image_url', image_url: { url: frame } }] }];
const limit = Number(maxTokens);

const streamed = [];
const stream = await client.chat.completions.create({ model: 'any', messages, max_tokens: limit, stream: true });
for await (const chunk of stream) streamed.push(chunk.choices[0]?.delta?.content ?? '');
const completion = await client.chat.completions.create({ model: 'any', messages, max_tokens: limit });
const response = await client.responses
  .stream({
    model: 'any',
    max_output_tokens: limit,
    input: [{ role: 'user', content: [{ type: 'input_text', text: question }, { type: 'input_image', image_url: frame }] }],
  })
  .finalResponse();

console.log(JSON.stringify({
  completion: completion.choices[0].message.content,
  finish_reason: completion.choices[0].finish_reason,
  streamed: streamed.join(''),
  response: response.output.flatMap((item) => item.content ?? []).map((part) => part.text ?? '').join(''),
  response_status: response.status,
}));
