// Appwrite 0.13-style Node.js function: module.exports = async (req, res) => {...}.
const { execSync } = require('child_process');

module.exports = async (req, res) => {
  const payload = req.payload;
  switch (payload) {
    case 'echo': {
      const env = Object.fromEntries(Object.entries(req.env)
        .filter(([k]) => k.startsWith('APPWRITE_FUNCTION_') || k === 'GREETING'));
      return res.json({ payload, headers: req.headers, env });
    }
    case 'unicode':
      return res.send(`héllo ☃ ${[...payload].length}`);
    case 'print':
      console.log('to stdout');
      console.error('to stderr');
      return res.send('printed');
    case 'child':
      execSync('echo from a child', { stdio: 'inherit' });
      return res.send('ran');
    case 'status':
      return res.send('short and stout', 418);
    case 'raise':
      throw new Error('boom');
    case 'sleep':
      await new Promise((resolve) => setTimeout(resolve, 30000));
      return res.send('late');
    default:
      return res.send(`default:${payload}`);
  }
};
