-- Appwrite 0.13's REST conventions on top of Envoy's gRPC-JSON transcoding.
--
-- Request: REST requests (anything not application/grpc) get the header
-- x-functions-rest, which scopes envoy.yaml's local_reply_config to them. Header names that HTTP
-- allows but gRPC metadata does not (`a~b`, `x|y`, ...) are dropped: the
-- server's gRPC stack would refuse the whole request with a 500.
-- Appwrite clients send JSON bodies on GET and DELETE ({} from Python,
-- `null` from node and the CLI): those bodies are dropped, and a `null` body
-- elsewhere counts as {}.
--
-- Response, REST only (native gRPC passes untouched):
--  * an error carries the x-appwrite-error header (the server's trailer, a
--    header here because error responses are trailers-only): it becomes the
--    body, and its "code" the HTTP status;
--  * x-http-code 201/204 from the server's initial metadata sets the status;
--    a 204 gets an empty body and a non-JSON content type, because the
--    Appwrite Python SDK of that era reads Content-Type on every response
--    and decodes JSON bodies.
-- Headers must be changed before body() is called.

-- The largest JSON request body (the API's largest legal one is far smaller).
MAX_JSON_BODY = 4194304

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  if string.sub(content_type, 1, 16) == "application/grpc" then
    return
  end
  headers:replace("x-functions-rest", "1")
  local illegal = {}
  for name, _ in pairs(headers) do
    if string.sub(name, 1, 1) ~= ":" and string.find(name, "[^0-9a-z_.%-]") then
      illegal[#illegal + 1] = name
    end
  end
  for _, name in ipairs(illegal) do
    headers:remove(name)
  end
  handle:streamInfo():dynamicMetadata():set("functions.rest", "rest", "1")
  local method = headers:get(":method")
  if method == "GET" or method == "DELETE" or method == "HEAD" then
    -- Drop any body. Not gated on content-length/transfer-encoding: Envoy's
    -- HTTP/1 codec strips transfer-encoding before filters run, so a chunked
    -- body was invisible here and reached the transcoder ("Root element must
    -- be a message" for `null`). body() returns nil at once when there is no
    -- body. Headers are read-only once body() has run, so the content type
    -- is removed first (removing it after body() raised).
    headers:remove("content-type")
    local body = handle:body()
    if body ~= nil then
      body:setBytes("")
    end
  elseif string.sub(content_type, 1, 19) ~= "multipart/form-data" then
    -- A JSON body past the limit is refused here with Appwrite's 413 body
    -- (gRPC would refuse the message as RESOURCE_EXHAUSTED, a 429 that
    -- clients retry). A chunked body without a length is buffered below, and
    -- past Envoy's buffer limit Envoy answers 413 itself (local_reply_config
    -- gives it the same shape). Uploads (multipart) stream and are exempt.
    local length = tonumber(headers:get("content-length") or "")
    if length ~= nil and length > MAX_JSON_BODY then
      -- A local reply: local_reply_config renders Appwrite's error body.
      handle:respond({[":status"] = "413"}, "Request body too large: the limit is " .. MAX_JSON_BODY .. " bytes.")
      return
    end
    -- Only a short body can be `null`: others pass without being buffered here.
    if length ~= nil and length >= 16 then
      return
    end
    local body = handle:body()
    if body ~= nil and body:length() < 16 then
      local text = body:getBytes(0, body:length())
      if string.match(text, "^%s*null%s*$") then
        body:setBytes("{}")
      end
    end
  end
end

local function drop_grpc_headers(headers)
  headers:remove("grpc-status")
  headers:remove("grpc-message")
  headers:remove("grpc-status-details-bin")
end

function envoy_on_response(handle)
  local marks = handle:streamInfo():dynamicMetadata():get("functions.rest")
  if marks == nil or marks["rest"] == nil then
    return
  end
  local headers = handle:headers()
  local error_body = headers:get("x-appwrite-error")
  if error_body ~= nil then
    local code = string.match(error_body, '"code"%s*:%s*(%d+)') or "500"
    headers:replace(":status", code)
    headers:remove("x-appwrite-error")
    drop_grpc_headers(headers)
    headers:replace("content-type", "application/json; charset=UTF-8")
    headers:replace("cache-control", "no-cache, no-store, must-revalidate")
    headers:replace("expires", "0")
    headers:replace("pragma", "no-cache")
    handle:body(true):setBytes(error_body)
    return
  end
  drop_grpc_headers(headers)
  headers:remove("grpc-accept-encoding")
  local code = headers:get("x-http-code")
  if code ~= nil then
    headers:remove("x-http-code")
    headers:replace(":status", code)
    if code == "204" then
      headers:replace("content-type", "text/html; charset=UTF-8")
      handle:body(true):setBytes("")
    end
  end
end
